"""espeak-ng rendering: audible 16 kHz speech, ordered word times, distinct voices, placement."""

import numpy as np
import pytest

from interaction_jax.data.speech import (
    MODEL_VOICE,
    OTHER_VOICE,
    USER_VOICE,
    SpeechRenderer,
    VoiceSpec,
    default_renderer,
    place,
)

TEXT = "In three seconds, say apple and then wait."


@pytest.fixture(scope="module")
def renderer():
    return default_renderer()


def test_render_audio_and_words(renderer):
    r = renderer.render(TEXT, USER_VOICE)
    assert r.sample_rate == 16000 and r.audio.dtype == np.float32 and r.audio.ndim == 1
    assert np.sqrt(np.mean(r.audio**2)) > 0.01  # not silent
    assert np.abs(r.audio).max() <= 1.0
    # ~8 words at ~165 wpm: about 2-4 s.
    assert 1.2 < r.duration < 5.0
    assert [w.text for w in r.words] == TEXT.split()
    starts = [w.start for w in r.words]
    assert starts[0] >= 0.0 and all(a < b for a, b in zip(starts, starts[1:]))
    for w, nxt in zip(r.words, r.words[1:]):
        assert w.start < w.end <= nxt.start + 1e-9
    assert r.words[-1].end <= r.duration + 1e-6
    # The last word ends where the sound does, not after trailing silence.
    tail = r.audio[int(r.words[-1].end * 16000) + 160 :]
    assert tail.size == 0 or np.abs(tail).max() < 0.02


def test_duration_scales_with_text(renderer):
    short = renderer.render("yes", USER_VOICE)
    long = renderer.render("yes " * 6, USER_VOICE)
    assert short.duration < 1.0 < long.duration
    assert len(long.words) == 6


def test_voices_differ(renderer):
    def centroid(audio):
        spec = np.abs(np.fft.rfft(audio[: 16000 * 1]))
        freqs = np.fft.rfftfreq(16000, 1 / 16000)[: spec.size]
        return float((spec * freqs).sum() / spec.sum())

    renders = [renderer.render("hello there, how are you", v) for v in (USER_VOICE, MODEL_VOICE, OTHER_VOICE)]
    for i in range(3):
        for j in range(i + 1, 3):
            a, b = renders[i].audio, renders[j].audio
            n = min(a.size, b.size)
            assert a.size != b.size or not np.allclose(a[:n], b[:n])
    # The model's (female, high pitch) voice is brighter than the user's (male, low pitch).
    assert centroid(renders[1].audio) > centroid(renders[0].audio) * 1.1


def test_render_is_cached_and_deterministic(renderer):
    a = renderer.render("the quick brown fox", MODEL_VOICE)
    assert renderer.render("the  quick brown fox ", MODEL_VOICE) is a
    fresh = SpeechRenderer(cache_size=1).render("the quick brown fox", MODEL_VOICE)
    np.testing.assert_array_equal(fresh.audio, a.audio)
    assert fresh.words == a.words


def test_unknown_voice_and_empty_text(renderer):
    with pytest.raises(ValueError, match="no voice"):
        renderer.render("hello", VoiceSpec("xx-nonexistent"))
    with pytest.raises(ValueError, match="empty"):
        renderer.render("   ", USER_VOICE)
    # The engine still works after an error.
    assert renderer.render("still working", USER_VOICE).words


def test_jitter_is_small_and_seeded():
    rng1, rng2 = np.random.default_rng(3), np.random.default_rng(3)
    a, b = USER_VOICE.jitter(rng1), USER_VOICE.jitter(rng2)
    assert a == b
    assert abs(a.rate_wpm - USER_VOICE.rate_wpm) <= 15 and abs(a.pitch - USER_VOICE.pitch) <= 6


def test_place_mixes_and_clips(renderer):
    r = renderer.render("one two three four", USER_VOICE)
    track = np.zeros(16000 * 2, np.float32)
    words = place(track, r, 0.5, 16000, gain=0.5)
    np.testing.assert_allclose(track[8000 : 8000 + 100], 0.5 * r.audio[:100])
    assert words[0].start == pytest.approx(0.5 + r.words[0].start)
    assert all(w.start < 2.0 and w.end <= 2.0 for w in words)
    short = np.zeros(16000, np.float32)
    clipped = place(short, r, 0.8, 16000)
    assert len(clipped) < len(r.words) and all(w.end <= 1.0 for w in clipped)
    with pytest.raises(ValueError, match="Hz"):
        place(track, r, 0.0, 8000)
