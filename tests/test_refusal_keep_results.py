"""experiments/refusal/keep_results.py: the committed form keeps every metric and the model's
judgements, drops the per-example outputs and the other systems' judgements, and never replaces
the full file it reads."""

from __future__ import annotations

import json

from conftest import REPO, load_script

SCRIPT = REPO / "experiments/refusal/keep_results.py"


def _results() -> dict:
    def system(judged):
        return {"refusal": {"refusal_rate": 0.9, "over_refusal_rate": 0.05, "examples": [{"words": "x"}],
                            "judgements": judged}}
    return {"metrics": {"model": system([{"kind": "disallowed", "refused": True}]),
                        "baseline": system([{"kind": "benign", "refused": False}])},
            "metrics_by_mode": {"typed": {"model": {"refusal": {"refusal_rate": 1.0, "examples": [1]}}}},
            "examples": {"refusal": [{"system": "model", "windows": [1, 2]}]},
            "workdir": "/somewhere/else", "commit": "abc1234"}


def test_the_top_level_outputs_go_and_an_example_count_stays():
    mod = load_script(SCRIPT, "_keep_results_top")
    src = _results()
    src["metrics"]["model"]["refusal"]["examples"] = 150  # evaluate's count of examples: a metric
    got = mod.keep(src)
    assert "examples" not in got and "examples" in src  # the input is not changed
    assert got["metrics"]["model"]["refusal"]["examples"] == 150


def test_keep_drops_outputs_and_other_judgements_but_no_metric(tmp_path):
    mod = load_script(SCRIPT, "_keep_results")
    src = _results()
    got = mod.keep(src, "runs/refusal/run")
    assert got["metrics"]["model"]["refusal"] == {"refusal_rate": 0.9, "over_refusal_rate": 0.05,
                                                  "judgements": [{"kind": "disallowed", "refused": True}]}
    assert got["metrics"]["baseline"]["refusal"] == {"refusal_rate": 0.9, "over_refusal_rate": 0.05}
    assert got["metrics_by_mode"]["typed"]["model"]["refusal"] == {"refusal_rate": 1.0}
    assert got["workdir"] == "runs/refusal/run" and got["commit"] == "abc1234"
    assert "examples" in src["metrics"]["model"]["refusal"]  # the input is not changed


def test_bad_inputs_exit_2_and_leave_the_files(tmp_path, capsys):
    mod = load_script(SCRIPT, "_keep_results_cli")
    full = tmp_path / "results.json"
    full.write_text(json.dumps(_results()))
    assert mod.main([str(full), str(full)]) == 2  # would replace the full results
    assert json.loads(full.read_text()) == _results()
    other = tmp_path / "fd.json"
    other.write_text(json.dumps({"metrics": {"model": {"timespeak": {}}}}))
    assert mod.main([str(other), str(tmp_path / "out.json")]) == 2
    assert "no refusal metrics" in capsys.readouterr().err
    assert mod.main([str(full), str(tmp_path / "kept.json")]) == 0
    assert "examples" not in json.loads((tmp_path / "kept.json").read_text())["metrics"]["model"]["refusal"]
