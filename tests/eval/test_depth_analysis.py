"""experiments/interaction_small/depth.py `analyse`: CueSpeak error analysis on a hand-built case."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import REPO, load_script

from interaction_jax.data.episode import Episode, Word

SCRIPT = REPO / "experiments" / "interaction_small" / "depth.py"


@pytest.fixture(scope="module")
def depth():
    return load_script(SCRIPT, "interaction_small_depth")


def _episode() -> Episode:
    # "say ding whenever I name a color": table (filler), red (cue, ends 2.0), dog (other category,
    # ends 3.0), chair (filler, ends 4.0), blue (cue, ends 5.0), cat (other category, ends 6.0)
    words = [Word("table", 1.0, 1.4), Word("red", 1.6, 2.0), Word("dog", 2.6, 3.0), Word("chair", 3.6, 4.0),
             Word("blue", 4.6, 5.0), Word("cat", 5.6, 6.0)]
    return Episode(episode_id="cue-0", duration=10.0, user_audio=np.zeros(160, np.float32),
                   model_audio=np.zeros(160, np.float32), user_words=words,
                   metadata={"category": "color", "response": "ding", "cue_ends": [2.0, 5.0]})


def _window(start, passed):
    return {"kind": "speak", "start": start, "end": start + 1.2, "passed": passed}


def test_analyse_counts_hits_words_and_false_responses_by_kind(depth):
    words = [{"text": "beep", "start": 2.3},   # in red's window, the wrong word: spoke, not right
             {"text": "ding", "start": 4.2},   # after chair (a filler), outside every cue window
             {"text": "ding", "start": 6.5}]   # after cat (another category), outside every cue window
    example = {"system": "model", "episode_id": "cue-0", "output": {"words": words},
               "windows": [_window(2.0, False), _window(5.0, False), {"kind": "silent", "start": 0.5, "end": 1.5}]}
    baseline = dict(example, system="turn-based baseline")
    got = depth.analyse([example, baseline], {"cue-0": _episode()})
    assert got["cue_windows_with_speech"] == 1 and got["said_right_word"] == 0.0
    assert got["hit_rate_by_category"] == {"color": 0.0}
    # non-cue words after the first cue: dog, cat (other category) and chair (filler); table is before it
    assert got["non_cue_words"] == {"other_category": 2, "filler": 1}
    assert got["false_response_after"] == {"other_category": 0.5, "filler": 1.0}


def test_analyse_right_word_and_no_false_response(depth):
    words = [{"text": "ding", "start": 2.3}, {"text": "ding", "start": 5.3}]
    example = {"system": "model", "episode_id": "cue-0", "output": {"words": words},
               "windows": [_window(2.0, True), _window(5.0, True)]}
    got = depth.analyse([example], {"cue-0": _episode()})
    assert got["said_right_word"] == 1.0 and got["hit_rate_by_category"] == {"color": 1.0}
    assert got["false_response_after"] == {"other_category": 0.0, "filler": 0.0}
