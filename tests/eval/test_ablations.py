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
