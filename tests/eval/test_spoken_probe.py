"""experiments/interaction_small/spoken.py: a one-change ablation on an existing task, and its table."""

from __future__ import annotations

import pytest
from conftest import REPO, load_script

from interaction_jax.data import tasks

SCRIPT = REPO / "experiments" / "interaction_small" / "spoken.py"


@pytest.fixture(scope="module")
def spoken():
    return load_script(SCRIPT, "interaction_small_spoken")


def test_rows_change_one_thing_on_a_spoken_task(spoken):
    assert spoken.TASK in tasks.TASKS and spoken.TASK.endswith("_spoken")
    assert spoken.ROWS["recipe"][1] == []
    assert spoken.ROWS["feedback"][1] == ["model.user_speech_feedback=True"]


def test_table_formats_model_and_cascade(spoken):
    row = {"change": "c", "training": {"user_speech_word_accuracy": 0.771},
           "timespeak": {"model": {"accuracy": 0.5, "speak_hit_rate": 0.625, "early_speech_rate": 0.1,
                                   "timing_error_median_s": 0.2},
                         "turn-based baseline": {"accuracy": 0.0}}}
    row["analysis"] = {"model": {"spoke_in_window": 1.0, "said_right_word": 0.375}}
    lines = spoken.table({"feedback": row, "recipe": {"change": "r", "training": {}, "timespeak": {}}}).splitlines()
    assert lines[2] == "| feedback | c | 0.50 | 0.62 | 1.00 / 0.38 | 0.10 | 0.20 s | 0.77 | 0.00 |"
    assert lines[3] == "| recipe | r | - | - | - / - | - | - | - | - |"


def test_analyse_splits_missed_windows_into_silence_and_wrong_word(spoken):
    def window(kind, start, expected=""):
        return {"kind": kind, "start": start, "end": start + 1.0, "expected": expected}

    examples = [  # right word in window 1; wrong word in window 2; silence in window 3; a silent window ignored
        {"system": "model", "windows": [window("speak", 1.0, "red"), window("speak", 3.0, "blue"),
                                        window("silent", 4.5)],
         "output": {"words": [{"text": "red", "start": 1.5}, {"text": "green", "start": 3.2},
                              {"text": "blue", "start": 4.9}]}},
        {"system": "model", "windows": [window("speak", 6.0, "cat")], "output": {"words": []}},
        {"system": "turn-based baseline", "windows": [window("speak", 1.0, "red")], "output": {"words": []}},
    ]
    got = spoken.analyse(examples)
    assert got["model"] == {"speak_windows": 3, "with_speech": 2, "right_word": 1, "spoke_in_window": 2 / 3,
                            "said_right_word": 0.5}
    assert got["turn-based baseline"]["spoke_in_window"] == 0.0
    assert got["turn-based baseline"]["said_right_word"] is None


def test_live_transcript_matches_words_in_order():
    module = load_script(SCRIPT.parent / "live_transcript.py", "interaction_small_live_transcript")
    said = "say river in three seconds".split()
    assert module.match_words(said, said) == 5
    assert module.match_words(said, "say liver in three seconds".split()) == 4  # one word misheard
    assert module.match_words(said, "seconds three in river say".split()) == 1  # order counts
    assert module.match_words(said, []) == 0
