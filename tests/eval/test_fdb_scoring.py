"""experiments/fdb_scoring/score.py without Full-Duplex-Bench: its parsing of FDB's printed lines (hand-written in
FDB's print format), its exit-2 lines, and its plumbing against a stand-in FDB folder whose scripts print and write
known numbers."""

import json
import textwrap

import pytest
from conftest import REPO, load_script

from interaction_jax import cli


@pytest.fixture(scope="module")
def score():
    path = REPO / "experiments" / "fdb_scoring" / "score.py"
    return load_script(path, "_fdb_scoring_score")


# what eval_smooth_turn_taking prints (print(path); print(f"the TOR is {TOR}"); print("Average take turn: ", x))
TURN_TAKING_OUT = """/tmp/r/smooth_turn_taking/turntaking-2200001/output.json
the TOR is 1
the latency is 0.42
/tmp/r/smooth_turn_taking/turntaking-2200003/output.json
the TOR is 0
the latency is None
---------------------------------------------------
[Result]
Average take turn:  0.5
Average latency:  0.42
---------------------------------------------------
"""
BACKCHANNEL_OUT = """duration is 0.5
JSD: 0.61
---------------------------------------------------
[Result]
JSD - Mean: 0.6100 ± 0.0500
TOR - Mean: 0.2500 ± 0.4330
Frequency - Mean: 0.1200 ± 0.0100

[Raw Counts]
Number of samples: 4
---------------------------------------------------
"""


def test_parses_turn_taking_and_interruption_lines(score):
    got = score.parse_fdb_output(TURN_TAKING_OUT)
    assert got["take_turn"] == 0.5 and got["latency_mean_s"] == 0.42
    assert got["per_sample"] == {"turntaking-2200001": {"tor": 1, "latency_s": 0.42},
                                 "turntaking-2200003": {"tor": 0, "latency_s": None}}
    got = score.parse_fdb_output("Average rating:  3.5\nAverage take turn:  1.0\nAverage latency:  1e-05\n")
    assert got == {"rating": 3.5, "take_turn": 1.0, "latency_mean_s": 1e-05}


def test_parses_backchannel_lines(score):
    got = score.parse_fdb_output(BACKCHANNEL_OUT)
    assert got == {"jsd_mean": 0.61, "jsd_std": 0.05, "tor_mean": 0.25, "tor_std": 0.433, "frequency_mean": 0.12,
                   "frequency_std": 0.01, "samples": 4}


def test_failure_line_is_the_traceback_s_last_line(score):
    err = "evaluate: 100%|##| 2/2\nTraceback (most recent call last):\n  File \"x.py\", line 9\n" \
          "ZeroDivisionError: division by zero\n"
    assert score.failure_line(err) == "ZeroDivisionError: division by zero"
    assert score.failure_line("") is None


def test_agreement_counts_samples_with_the_same_tor(score):
    fdb = {"a": {"tor": 1, "latency_s": 0.1}, "b": {"tor": 0, "latency_s": None}, "c": {"tor": 1, "latency_s": 0.0}}
    assert score.agreement(fdb, {"a": 1, "b": 1, "c": None}) == {"samples": 2, "same_tor": 1, "differ": ["b"]}
    assert score.agreement({}, {"a": 1}) is None


def _sample(root, sid, annotation, ann, timing):
    d = root / sid
    d.mkdir(parents=True)
    (d / "input.wav").write_bytes(b"")  # only looked for, never read, here
    (d / "output.json").write_text(json.dumps({"text": "", "chunks": []}))
    (d / ann).write_text(json.dumps(annotation))
    (d / "timing.json").write_text(json.dumps({"metrics": timing}))


def _export(tmp_path):
    """Two turn-taking samples and two interruption samples with hand-chosen timing.json metrics."""
    out = tmp_path / "export"
    tt, ui = out / "smooth_turn_taking", out / "user_interruption"
    m1 = {"fdb_take_turn": 1, "fdb_latency_s": 0.4, "response_latency_s": 0.4, "first_onset_s": 3.4}
    m2 = {"fdb_take_turn": 0, "fdb_latency_s": None, "response_latency_s": None, "first_onset_s": None}
    _sample(tt, "turntaking-2200001", [{"text": "q", "timestamp": [3.0, 9.0]}], "turn_taking.json",
            {"text": m1, "audio": {**m1, "response_latency_s": 0.6}})
    _sample(tt, "turntaking-2200003", [{"text": "q", "timestamp": [3.0, 9.0]}], "turn_taking.json",
            {"text": m2, "audio": m2})
    s = {"fdb_take_turn": 0, "fdb_latency_s": None, "response_latency_s": None, "first_onset_s": 1.0,
         "speaking_at_interrupt": True, "stop_latency_s": 0.2}
    for i, stop in ((1, 0.2), (2, 0.4)):
        _sample(ui, f"interruption-230000{i}", [{"context": "a", "interrupt": "b", "timestamp": [2.0, 3.0]}],
                "interrupt.json", {"text": {**s, "stop_latency_s": stop}, "audio": s})
    return out


def test_ours_reads_timing_json(score, tmp_path):
    out = _export(tmp_path)
    o = score.ours(str(out / "smooth_turn_taking"))
    assert o["samples"] == 2
    assert o["text"]["fdb_rule_take_turn"] == 0.5 and o["text"]["takeover_3s_rate"] == 0.5
    assert o["text"]["response_latency_s"] == {"n": 1, "mean": 0.4, "median": 0.4}
    assert o["audio"]["response_latency_s"]["median"] == 0.6
    assert o["per_sample_fdb_rule_take_turn_text"] == {"turntaking-2200001": 1, "turntaking-2200003": 0}
    o = score.ours(str(out / "user_interruption"))
    assert o["text"]["stop_latency_s"] == {"n": 2, "mean": 0.3, "median": 0.3}
    assert o["text"]["speaking_at_interrupt_rate"] == 1.0


def test_read_timing_intervals(score, tmp_path):
    for sid, stops, gaps in (("a", [[1.0, 1.5]], [[2.0, 2.25]]), ("b", [], [[4.0, 5.0], [6.0, 6.75]])):
        (tmp_path / sid).mkdir()
        (tmp_path / sid / "latency_intervals.json").write_text(json.dumps(
            {"latency_stop_list": stops, "latency_resp_list": gaps}))
    got = score.read_timing_intervals(str(tmp_path))
    assert got == {"samples": 2, "overlap_s": {"n": 1, "mean": 0.5, "median": 0.5},
                   "response_gap_s": {"n": 3, "mean": 0.6667, "median": 0.75}}


# ---- the command ---------------------------------------------------------------------------------
FAKE_EVALUATE = """
import argparse, os
p = argparse.ArgumentParser(); p.add_argument("--task"); p.add_argument("--root_dir"); a = p.parse_args()
for s in sorted(os.listdir(a.root_dir)):
    print(os.path.join(a.root_dir, s, "output.json")); print("the TOR is 1"); print("the latency is 0.25")
print("Average take turn: ", 1.0); print("Average latency: ", 0.25)
"""
FAKE_INTERRUPTION = """
import json, os
def eval_user_interruption(root_dir, client):
    reply = client.chat.completions.create(model="m", messages=[]).choices[0].message.content
    first = sorted(os.listdir(root_dir))[0]
    with open(os.path.join(root_dir, first, "rating.json"), "w") as f:
        json.dump({"analysis": reply, "rating": 0}, f)
    1 / 0
"""
FAKE_TIMING = """
import argparse, json, os
p = argparse.ArgumentParser(); p.add_argument("--root_dir"); a = p.parse_args()
for s in os.listdir(a.root_dir):
    with open(os.path.join(a.root_dir, s, "latency_intervals.json"), "w") as f:
        json.dump({"latency_stop_list": [[1.0, 1.25]], "latency_resp_list": [[3.0, 3.5]]}, f)
"""


def _fake_fdb(tmp_path):
    d = tmp_path / "FDB" / "v1_v1.5" / "evaluation"
    d.mkdir(parents=True)
    for name in ("eval_smooth_turn_taking.py", "eval_pause_handling.py", "eval_backchannel.py",
                 "icc_gt_distribution.json"):
        (d / name).write_text("")
    (d / "evaluate.py").write_text(textwrap.dedent(FAKE_EVALUATE))
    (d / "eval_user_interruption.py").write_text(textwrap.dedent(FAKE_INTERRUPTION))
    (d / "get_timing.py").write_text(textwrap.dedent(FAKE_TIMING))
    return tmp_path / "FDB"


def _invoke(score, argv):
    return cli.invoke(score.main, ["score.py", *argv], name="fdb_scoring", define_flags=score._define_flags)


def test_runs_each_root_on_a_copy_and_writes_one_json(score, tmp_path, capsys):
    fdb, export, out = _fake_fdb(tmp_path), _export(tmp_path), tmp_path / "results.json"
    before = sorted(p.name for p in export.rglob("*"))
    assert _invoke(score, [f"--export=model={export}", f"--fdb_repo={fdb}", f"--out={out}"]) == 0
    assert sorted(p.name for p in export.rglob("*")) == before  # FDB's rating/latency files went to the copy
    r = json.loads(out.read_text())
    tt, ui = r["systems"]["model"]["smooth_turn_taking"], r["systems"]["model"]["user_interruption"]
    assert tt["fdb"]["take_turn"] == 1.0 and tt["fdb"]["latency_mean_s"] == 0.25 and tt["fdb"]["returncode"] == 0
    assert tt["tor_agreement"] == {"samples": 2, "same_tor": 1, "differ": ["turntaking-2200003"]}
    assert tt["get_timing"]["response_gap_s"] == {"n": 2, "mean": 0.5, "median": 0.5}
    assert ui["fdb"]["failure"] == "ZeroDivisionError: division by zero"
    assert ui["fdb"]["take_turn_from_rating_files"] == 0.5 and ui["fdb"]["rating"] is None
    assert ui["ours"]["text"]["stop_latency_s"]["median"] == 0.3
    assert r["exports"] == {"model": {"smooth_turn_taking": 2, "user_interruption": 2}}
    assert "| model | smooth_turn_taking | 2 | 1.00 | 0.25 | 0.50 / 0.40 | 0.50 | 0.40 / 0.60 | 0.50 |" in r["table"]
    assert r["table"] in capsys.readouterr().out


def test_bad_inputs_exit_2_with_one_line(score, tmp_path, capsys):
    fdb, export = _fake_fdb(tmp_path), _export(tmp_path)
    (tmp_path / "empty").mkdir()
    cases = [
        ([f"--export={export}", f"--fdb_repo={tmp_path / 'empty'}"], "is not a Full-Duplex-Bench checkout"),
        ([f"--export={tmp_path / 'empty'}", f"--fdb_repo={fdb}"], "is not a Full-Duplex-Bench export"),
        ([f"--export={tmp_path / 'nowhere'}", f"--fdb_repo={fdb}"], "is not a folder"),
        ([f"--export=a={export}", f"--export=a={export}", f"--fdb_repo={fdb}"], "given twice"),
    ]
    for argv, message in cases:
        assert _invoke(score, [*argv, f"--out={tmp_path / 'r.json'}"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0] and err[0].startswith("[fdb_scoring] error:"), err
    (export / "user_interruption" / "interruption-2300001" / "output.json").unlink()
    assert _invoke(score, [f"--export={export}", f"--fdb_repo={fdb}", f"--out={tmp_path / 'r.json'}"]) == 2
    assert "has no output.json" in capsys.readouterr().err
    assert not (tmp_path / "r.json").exists()


def test_v15_behaviour_roots_are_listed_not_scored(score, tmp_path, capsys):
    """A `talking_to_other` root (v1.5: scored by its GPT-judged behaviour script) is skipped with a line."""
    fdb, export, out = _fake_fdb(tmp_path), _export(tmp_path), tmp_path / "results.json"
    _sample(export / "talking_to_other", "others-2400001", {"timestamps": [1.0, 2.0]}, "metadata.json",
            {"text": {}, "audio": {}})
    assert _invoke(score, [f"--export=model={export}", f"--fdb_repo={fdb}", f"--out={out}"]) == 0
    r = json.loads(out.read_text())
    assert r["skipped_v15_roots"] == {"model": ["talking_to_other"]}
    assert set(r["systems"]["model"]) == {"smooth_turn_taking", "user_interruption"}
    assert "model/talking_to_other: a v1.5 root" in capsys.readouterr().out


def test_v15_behaviour_roots_scored_with_the_openai_judge(score, tmp_path):
    """--judge=openai: a v1.5 root runs v1.5's `evaluate.py --task behavior`; its printed ratios are kept."""
    fdb, export, out = _fake_fdb(tmp_path), _export(tmp_path), tmp_path / "results.json"
    _sample(export / "talking_to_other", "others-2400001", {"timestamps": [1.0, 2.0]}, "metadata.json",
            {"text": {}, "audio": {}})
    ev = fdb / "v1_v1.5" / "evaluation" / "evaluate.py"
    ev.write_text(ev.read_text() + textwrap.dedent("""
        if a.task == "behavior":
            print("Ratios (C-axis): {'C_RESPOND': 0.25, 'C_RESUME': 0.75}")
        """))
    (fdb / "v1_v1.5" / "evaluation" / "eval_user_interruption.py").write_text("")  # evaluate.py runs it itself
    assert _invoke(score, [f"--export=model={export}", f"--fdb_repo={fdb}", f"--out={out}", "--judge=openai"]) == 0
    r = json.loads(out.read_text())
    assert r["skipped_v15_roots"] == {}
    tto = r["systems"]["model"]["talking_to_other"]["fdb"]
    assert tto["command"] == "python evaluate.py --task behavior --root_dir talking_to_other/"
    assert tto["behavior_ratios"] == {"C_RESPOND": 0.25, "C_RESUME": 0.75}
    assert "| model | talking_to_other | {'C_RESPOND': 0.25, 'C_RESUME': 0.75} |" in r["table"]
    assert score.parse_behavior_output("Ratios (C-axis): not a dict\n") == {"behavior_ratios_text": "not a dict"}
