"""experiments/interaction_small/spoken.py: a one-change ablation on an existing task, and its table."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from interaction_jax.data import tasks

SCRIPT = Path(__file__).resolve().parents[2] / "experiments" / "interaction_small" / "spoken.py"


@pytest.fixture(scope="module")
def spoken():
    spec = importlib.util.spec_from_file_location("interaction_small_spoken", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield module
    sys.path.remove(str(SCRIPT.parent))


def test_rows_change_one_thing_on_a_spoken_task(spoken):
    assert spoken.TASK in tasks.TASKS and spoken.TASK.endswith("_spoken")
    assert spoken.ROWS["recipe"][1] == []
    assert spoken.ROWS["feedback"][1] == ["model.user_speech_feedback=True"]


def test_table_formats_model_and_cascade(spoken):
    row = {"change": "c", "training": {"user_speech_word_accuracy": 0.771},
           "timespeak": {"model": {"accuracy": 0.5, "speak_hit_rate": 0.625, "early_speech_rate": 0.1,
                                   "timing_error_median_s": 0.2},
                         "turn-based baseline": {"accuracy": 0.0}}}
    lines = spoken.table({"feedback": row, "recipe": {"change": "r", "training": {}, "timespeak": {}}}).splitlines()
    assert lines[2] == "| feedback | c | 0.50 | 0.62 | 0.10 | 0.20 s | 0.77 | 0.00 |"
    assert lines[3] == "| recipe | r | - | - | - | - | - | - |"
