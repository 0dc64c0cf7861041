"""Round trips and corruption handling of the episode record format."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

from interaction_jax.data import serialize
from interaction_jax.data.episode import (
    BackgroundEvent,
    Episode,
    GradingWindow,
    TextEvent,
    VideoFrame,
    Word,
)


def make_episode(i: int = 0, *, duration: float = 0.5, sample_rate: int = 8000) -> Episode:
    """A small episode with every field populated, distinct per `i`."""
    rng = np.random.default_rng(i)
    n = int(round(duration * sample_rate))
    frames = [VideoFrame(0.1 * k, rng.integers(0, 256, (4, 6, 3), dtype=np.uint8)) for k in range(2)]
    return Episode(
        episode_id=f"ep{i}",
        duration=duration,
        sample_rate=sample_rate,
        user_audio=rng.uniform(-0.9, 0.9, n).astype(np.float32),
        model_audio=rng.uniform(-0.5, 0.5, n).astype(np.float32),
        user_words=[Word("hello", 0.0, 0.1), Word(f"u{i}", 0.1, 0.2)],
        model_words=[Word("hi", 0.25, 0.3)],
        other_words=[Word("psst", 0.3, 0.35)],
        user_text=[TextEvent("typed", 0.05)],
        video=frames,
        background=[BackgroundEvent("request", 0.2, "look it up", job_id=3),
                    BackgroundEvent("result", 0.4, "found", job_id=3)],
        grading=[GradingWindow("speak", 0.2, 0.4, "hi")],
        task="unit",
        metadata={"seed": i, "nested": {"a": [1, 2]}},
    )


def assert_same(a: Episode, b: Episode) -> None:
    for f in ("episode_id", "duration", "sample_rate", "task", "metadata", "user_words", "model_words",
              "other_words", "user_text", "background", "grading"):
        assert getattr(a, f) == getattr(b, f), f
    tol = 0.5 / serialize.PCM_SCALE + 1e-7
    np.testing.assert_allclose(a.user_audio, b.user_audio, atol=tol)
    np.testing.assert_allclose(a.model_audio, b.model_audio, atol=tol)
    assert b.user_audio.dtype == np.float32
    assert [f.time for f in a.video] == [f.time for f in b.video]
    for fa, fb in zip(a.video, b.video):
        np.testing.assert_array_equal(fa.image, fb.image)
        assert fb.image.dtype == np.uint8


def test_round_trip_all_fields_and_extras():
    ep = make_episode(3)
    extras = {"user_logmel": np.random.default_rng(0).normal(size=(5, 8)).astype(np.float16),
              "model_logmel": np.ones((5, 8), np.float16)}
    back, got = serialize.episode_and_extras_from_bytes(serialize.episode_to_bytes(ep, extras=extras))
    assert_same(ep, back)
    assert sorted(got) == sorted(extras)
    for k, v in extras.items():
        assert got[k].dtype == np.float16
        np.testing.assert_array_equal(got[k], v)
    assert serialize.record_header(serialize.episode_to_bytes(ep))["episode_id"] == "ep3"


def test_round_trip_minimal_and_mixed_frame_shapes():
    ep = Episode("bare", duration=0.01, sample_rate=1000)
    assert_same(ep, serialize.episode_from_bytes(serialize.episode_to_bytes(ep)))
    frames = [VideoFrame(0.0, np.zeros((2, 2, 3), np.uint8)), VideoFrame(0.5, np.ones((3, 1, 3), np.uint8))]
    ep = Episode("mixed", duration=1.0, sample_rate=100, video=frames)
    assert_same(ep, serialize.episode_from_bytes(serialize.episode_to_bytes(ep)))


def test_audio_is_clipped_and_quantised():
    x = np.array([-2.0, -1.0, -0.25, 0.0, 1e-6, 0.5, 3.0], np.float32)
    ep = Episode("clip", duration=x.size / 100, sample_rate=100, user_audio=x)
    back = serialize.episode_from_bytes(serialize.episode_to_bytes(ep)).user_audio
    np.testing.assert_allclose(back, np.clip(x, -1, 1), atol=0.5 / 32767 + 1e-7)
    assert back.min() == -1.0 and back.max() == 1.0


def test_metadata_numpy_scalars_and_unserialisable():
    ep = make_episode(0)
    ep.metadata = {"n": np.int64(4), "v": np.arange(2)}
    assert serialize.episode_from_bytes(serialize.episode_to_bytes(ep)).metadata == {"n": 4, "v": [0, 1]}
    ep.metadata = {"bad": object()}
    with pytest.raises(ValueError, match="cannot serialise header"):
        serialize.episode_to_bytes(ep)


def _rewrite_header(data: bytes, **changes) -> bytes:
    with np.load(io.BytesIO(data)) as z:
        arrays = {k: z[k] for k in z.files}
    header = json.loads(bytes(arrays["header"]).decode())
    header.update(changes)
    arrays["header"] = np.frombuffer(json.dumps(header).encode(), np.uint8)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


@pytest.mark.parametrize("payload,match", [
    (b"", "corrupt episode record"),
    (b"not a record at all", "corrupt episode record"),
    ("truncated", "corrupt episode record"),
    ("flipped", "corrupt episode record"),
    ("version", "unsupported episode record version 99"),
    ("format", "not an interaction_jax.episode record"),
    ("samples", "corrupt episode record: audio length"),
])
def test_corrupt_payloads_raise_value_error(payload, match):
    good = serialize.episode_to_bytes(make_episode(1))
    if payload == "truncated":
        payload = good[: len(good) // 2]
    elif payload == "flipped":
        payload = good[:10] + bytes(b ^ 0xFF for b in good[10:200]) + good[200:]
    elif payload == "version":
        payload = _rewrite_header(good, version=99)
    elif payload == "format":
        payload = _rewrite_header(good, format="something.else")
    elif payload == "samples":
        payload = _rewrite_header(good, num_samples=[1, 2])
    with pytest.raises(ValueError, match=match):
        serialize.episode_from_bytes(payload)
