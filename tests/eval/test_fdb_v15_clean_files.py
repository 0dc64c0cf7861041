"""fdb_v15.clean_files on a hand-built interruption episode: what v1.5's reference input must be."""

from __future__ import annotations

import numpy as np

from interaction_jax.data.episode import Episode, Word
from interaction_jax.eval import fdb_v15


def _episode(other_words=()):
    return Episode("ep", 2.0, user_words=[Word("hello", 0.2, 0.5), Word("stop", 1.0, 1.3)],
                   other_words=list(other_words), metadata={"interruption_onset": 1.0})


ANNOTATION = [{"timestamp": [1.0, 1.3], "context": "hello", "interrupt": "stop"}]


def test_interruption_reference_is_the_context_then_silence():
    sr = 100
    audio = np.linspace(0.1, 0.9, 2 * sr, dtype=np.float32)
    files = fdb_v15.clean_files(_episode(), "user_interruption", ANNOTATION, audio, sr)
    clean = files[fdb_v15.CLEAN_INPUT_WAV]
    np.testing.assert_array_equal(clean[:100], audio[:100])  # before the onset (1.0 s = sample 100): unchanged
    assert not clean[100:].any()  # from the onset to the end: silence
    assert audio[100:].all()  # the input itself is left as it was
    assert files[fdb_v15.METADATA_JSON] == {"context_text": "hello", "current_turn_text": "stop",
                                            "timestamps": [1.0, 1.3]}
    assert files[fdb_v15.CLEAN_INPUT_JSON]["text"].split() == ["hello"]
    assert files[fdb_v15.INPUT_JSON]["text"].split() == ["hello", "stop"]


def test_no_reference_where_the_event_cannot_be_removed_exactly():
    audio = np.ones(200, np.float32)
    assert fdb_v15.clean_files(_episode(), "backchannel", ANNOTATION, audio, 100) is None
    third = [Word("psst", 0.6, 0.8)]
    assert fdb_v15.clean_files(_episode(third), "user_interruption", ANNOTATION, audio, 100) is None
