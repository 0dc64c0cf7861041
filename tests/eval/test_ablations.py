"""experiments/interaction_small/ablations.py: every row is a valid one-change config of the recipe."""

from __future__ import annotations

import pytest
from conftest import REPO, load_script

from interaction_jax.config_lib import load_config

HERE = REPO / "experiments" / "interaction_small"


@pytest.fixture(scope="module")
def ablations():
    return load_script(HERE / "ablations.py", "interaction_small_ablations")


def _flat(cfg) -> dict:
    out = {}
    for section in ("data", "model", "train"):
        for k, v in cfg[section].items():
            out[f"{section}.{k}"] = v
    return out


def test_every_row_loads_and_changes_only_what_it_names(ablations):
    base = _flat(load_config(str(HERE / "config.py"), []))
    assert ablations.ROWS["recipe"][1] == []
    for name, (_, overrides) in ablations.ROWS.items():
        cfg = _flat(load_config(str(HERE / "config.py"), overrides))
        changed = {k for k in base if base[k] != cfg[k]}
        named = {o.split("=", 1)[0] for o in overrides}
        assert changed <= named, (name, changed - named)
        assert named - {"data.start_at_zero_prob"} <= changed or name == "recipe", (name, named - changed)


def test_rows_with_the_same_mix_share_rendered_data(ablations):
    keys = {name: ablations._data_key(o) for name, (_, o) in ablations.ROWS.items()}
    assert keys["recipe"] == keys["one_head"] == keys["no_self_audio_dropout"] == keys["no_user_speech"]
    assert keys["spoken_content"] != keys["recipe"]
    assert "_typed" not in ablations.SPOKEN_MIX and "timespeak=3" in ablations.SPOKEN_MIX


def test_table_has_one_line_per_row(ablations):
    h = {k: 0.5 for k in ablations.HEADLINE}
    h["cuespeak_accuracy"] = None
    rows = {"recipe": {"test": {"headline_typed": {"model": h}}}}
    lines = ablations.table(rows).splitlines()
    assert len(lines) == 3 and lines[2].startswith("| recipe |") and "| - |" in lines[2]


def test_summary_keeps_only_rows_of_this_budget(ablations, tmp_path):
    import json

    def res(steps, temperature):
        return {"config": {"train": {"num_steps": steps}}, "decoding": {"temperature": temperature},
                "commit": "abc", "wall_seconds": {"train": 10.0},
                "test": {"examples_per_task": 20, "headline_typed": {"model": {"timespeak_accuracy": 0.5}}}}

    for name, r in {"recipe": res(750, 0.7), "one_head": res(500, 0.7), "cropped_windows": res(750, 0.3)}.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps(r))
    rows = ablations.write_summary(str(tmp_path), 750, 20, 0.7)
    assert list(rows) == ["recipe"]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert list(summary["rows"]) == ["recipe"] and summary["rows"]["recipe"]["examples_per_task"] == 20
    assert summary["rows"]["recipe"]["headline"] == {"timespeak_accuracy": 0.5}
