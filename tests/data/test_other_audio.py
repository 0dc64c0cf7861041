"""Episode.other_audio: the third voices kept alone, so the user channel without them is exact; stored and read back.

The reference for "the user channel without the third voices" is the same seeded episode built
again with the third voices left out (the builder draws nothing for them, so every other draw,
the noise floor included, stays put)."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

from interaction_jax.data import serialize, tasks
from interaction_jax.data.speech import default_renderer
from interaction_jax.data.store import open_store, write_store
from interaction_jax.data.tasks.common import BACKGROUND_GAIN, NOISE_STD, EpisodeBuilder

SR = 16000


def _built(with_other: bool, seed: int = 5):
    b = EpisodeBuilder("others", seed, 4.0, default_renderer())
    b.user_says("hello there", 0.3)
    if with_other:
        b.other_says("the weather is fine", 1.6, gain=BACKGROUND_GAIN)
    return b.finish()


def test_user_audio_minus_other_audio_is_the_episode_without_the_third_voice():
    mixed, alone = _built(True), _built(False)
    assert not alone.other_audio.size and mixed.other_audio.shape == mixed.user_audio.shape
    clean = mixed.user_audio - mixed.other_audio
    np.testing.assert_allclose(clean, alone.user_audio, rtol=0, atol=1e-7)  # float32 rounding of (u + o) - o
    i0 = int(1.6 * SR)
    assert not mixed.other_audio[:i0].any()  # the third voice starts where it was placed
    np.testing.assert_array_equal(mixed.user_audio[:i0], alone.user_audio[:i0])  # bit-identical before it
    # where only the third voice speaks (after the user's words), the clean channel is the noise floor
    span = slice(int((mixed.other_words[0].start + 0.05) * SR), int(mixed.other_words[-1].end * SR))
    assert mixed.user_words[-1].end < mixed.other_words[0].start
    assert np.std(clean[span]) == pytest.approx(NOISE_STD, rel=0.1)
    assert np.std(mixed.user_audio[span]) > 5 * NOISE_STD


def test_others_episodes_keep_their_third_voices_and_other_tasks_none():
    for seed in range(4):
        ep = tasks.generate("others", seed, duration_s=8.0)
        assert ep.other_audio.size == (ep.num_samples if ep.other_words else 0)
        if ep.other_words:
            assert np.abs(ep.user_audio).max() < 1.0  # nothing clipped, so the subtraction is exact
            speaking = np.zeros(ep.num_samples, bool)
            for w in ep.other_words:
                speaking[int(w.start * SR): int(w.end * SR) + int(0.05 * SR)] = True
            assert not ep.other_audio[~speaking].any()  # only where the other words are (their tail <= 50 ms)
    for task in ("interruption", "turntaking", "timespeak"):
        ep = tasks.generate(task, 0, duration_s=6.0)
        assert not ep.other_words and ep.other_audio.size == 0
        assert b"other_audio" not in serialize.episode_to_bytes(ep)  # records of other tasks are as before


def _old_record(ep) -> bytes:
    """The record a writer without the field made: no other_audio entry, no other_samples header key."""
    with np.load(io.BytesIO(serialize.episode_to_bytes(ep)), allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files if k != "other_audio"}
    header = serialize.record_header(serialize.episode_to_bytes(ep))
    header.pop("other_samples")
    arrays["header"] = np.frombuffer(json.dumps(header).encode(), np.uint8)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def test_store_round_trip_and_old_stores_load(tmp_path):
    ep = _built(True)
    out = write_store(str(tmp_path / "s"), [ep, _old_record(ep)], metadata={}, progress=False)
    s = open_store(out)
    back, old = s[0], s[1]
    assert back.other_audio.dtype == np.float32
    np.testing.assert_allclose(back.other_audio, ep.other_audio, rtol=0, atol=0.5 / 32767 + 1e-7)  # int16 PCM
    clean = back.user_audio - back.other_audio  # two half-step roundings: within one PCM step of the truth
    np.testing.assert_allclose(clean, _built(False).user_audio, rtol=0, atol=1 / 32767 + 1e-7)
    assert old.other_audio.size == 0 and old.other_words == ep.other_words  # an old record: no track, words kept
    np.testing.assert_array_equal(old.user_audio, back.user_audio)


def test_a_bad_other_audio_length_is_a_corrupt_record():
    data = serialize.episode_to_bytes(_built(True))
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["other_audio"] = arrays["other_audio"][:-1]
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    with pytest.raises(ValueError, match="corrupt episode record: other_audio length"):
        serialize.episode_from_bytes(buf.getvalue())
