"""Audio loading: resampling, channels, clear errors, atomic writes."""

import os

import numpy as np
import pytest
import soundfile as sf
from hypothesis import given, settings
from hypothesis import strategies as st

from interaction_jax.features.audio import (
    AudioError,
    ensure_audio,
    limit_peak,
    load_audio,
    load_stereo,
    on_input_clock,
    save_wav,
)


def _write(path, data, sr, **kw):
    sf.write(str(path), data, sr, **kw)
    return str(path)


@pytest.mark.parametrize("sr", [8000, 44100])
def test_load_audio_resamples_to_16k(tmp_path, sr):
    n = sr // 2  # 0.5 s
    path = _write(tmp_path / "a.wav", 0.5 * np.sin(2 * np.pi * 200 * np.arange(n) / sr), sr)
    out = load_audio(path)
    assert out.dtype == np.float32 and out.ndim == 1 and len(out) == 8000
    spec = np.abs(np.fft.rfft(out))
    assert abs(np.argmax(spec) * 16000 / len(out) - 200) < 3  # the tone survives resampling


def test_load_audio_from_bytes_and_pathlike(tmp_path):
    x = (0.25 * np.sin(np.arange(1600) / 5)).astype(np.float32)
    path = tmp_path / "b.wav"
    _write(path, x, 16000, subtype="FLOAT")
    np.testing.assert_array_equal(load_audio(path.read_bytes()), x)
    np.testing.assert_array_equal(load_audio(path), x)


def test_stereo_needs_explicit_mixing(tmp_path):
    path = _write(tmp_path / "s.wav", np.stack([np.full(4410, 0.2), np.full(4410, -0.4)], 1), 44100)
    with pytest.raises(AudioError, match="2 channels.*mono='mix'"):
        load_audio(path)
    mixed = load_audio(path, mono="mix")
    assert mixed.shape == (1600,)
    np.testing.assert_allclose(mixed[200:-200], -0.1, atol=2e-3)  # away from resampler edges
    both = load_stereo(path)
    assert both.shape == (2, 1600) and both.dtype == np.float32
    np.testing.assert_allclose(both[:, 800], [0.2, -0.4], atol=2e-3)
    with pytest.raises(ValueError, match="'require' or 'mix'"):
        load_audio(path, mono="left")


def test_load_stereo_checks_channel_count(tmp_path):
    path = _write(tmp_path / "m.wav", np.zeros(1600), 16000)
    with pytest.raises(AudioError, match="expected 2 channels, got 1"):
        load_stereo(path)
    assert load_stereo(path, channels=None).shape == (1, 1600)


def test_clear_errors_for_empty_corrupt_and_missing(tmp_path):
    header_only = _write(tmp_path / "e.wav", np.zeros(0), 16000)
    with pytest.raises(AudioError, match="e.wav.*no samples"):
        load_audio(header_only)
    zero = tmp_path / "z.wav"
    zero.write_bytes(b"")
    with pytest.raises(AudioError, match="z.wav.*empty"):
        load_audio(str(zero))
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF not really a wav at all" * 10)
    with pytest.raises(AudioError, match="bad.wav.*cannot decode"):
        load_audio(str(bad))
    with pytest.raises(AudioError, match="cannot decode"):
        load_audio(b"garbage bytes" * 10)
    with pytest.raises(AudioError, match="missing.wav.*does not exist"):
        load_audio(str(tmp_path / "missing.wav"))
    with pytest.raises(AudioError, match="directory"):
        load_audio(str(tmp_path))


def test_ensure_audio_checks_in_memory_arrays():
    with pytest.raises(AudioError, match="NaN or inf"):
        ensure_audio(np.array([0.0, np.inf]), 16000)
    with pytest.raises(AudioError, match="empty"):
        ensure_audio(np.zeros(0), 16000)
    with pytest.raises(AudioError, match="2 channels"):
        ensure_audio(np.zeros((100, 2)), 16000)
    with pytest.raises(AudioError, match="transpose"):
        ensure_audio(np.zeros((2, 1000)), 16000)
    with pytest.raises(AudioError, match="positive"):
        ensure_audio(np.zeros(10), 0)
    np.testing.assert_allclose(ensure_audio(np.array([[0.2, 0.4]] * 10), 16000, mono="mix"), 0.3)
    np.testing.assert_allclose(ensure_audio(np.array([16384, -32768], np.int16), 16000), [0.5, -1.0])
    assert ensure_audio(np.zeros(8000, np.float64), 8000).shape == (16000,)


@settings(max_examples=25, deadline=None)
@given(st.sampled_from([8000, 11025, 22050, 24000, 44100, 48000]), st.integers(1, 4000))
def test_resampled_length_is_proportional(sr, n):
    out = ensure_audio(np.zeros(n, np.float32), sr)
    assert out.dtype == np.float32 and abs(len(out) - n * 16000 / sr) <= 1


def test_save_wav_is_atomic_and_round_trips(tmp_path):
    x = (0.25 * np.sin(np.arange(1600) / 5)).astype(np.float32)
    p = save_wav(tmp_path / "sub" / "o.wav", x, 16000)
    np.testing.assert_allclose(load_audio(p), x, atol=1e-4)
    save_wav(p, np.stack([x, -x]), 16000)  # overwrite in place, [channels, n]
    np.testing.assert_allclose(load_stereo(p), np.stack([x, -x]), atol=1e-4)
    assert sorted(f.name for f in (tmp_path / "sub").iterdir()) == ["o.wav"]  # no temp files left
    with pytest.raises(AudioError, match="NaN"):
        save_wav(tmp_path / "n.wav", np.array([np.nan]), 16000)
    assert not (tmp_path / "n.wav").exists()


def test_save_wav_is_readable_by_others(tmp_path):
    import stat

    p = save_wav(tmp_path / "o.wav", np.zeros(10), 16000)
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o644  # not mkstemp's 0600


def test_limit_peak_scales_down_only():
    loud = np.array([0.0, 3.0, -6.0, 1.5], np.float32)
    y = limit_peak(loud)
    assert np.abs(y).max() == pytest.approx(0.9) and np.allclose(y / y[2], loud / loud[2])  # one gain, shape kept
    quiet = np.array([0.1, -0.5], np.float32)
    assert np.array_equal(limit_peak(quiet), quiet)
    assert limit_peak(np.zeros(0)).size == 0
    with pytest.raises(ValueError, match="peak"):
        limit_peak(quiet, 1.5)


def test_griffin_lim_of_a_loud_mel_does_not_clip(tmp_path):
    """An untrained model's mel (log10 magnitudes far above speech) is limited, so the written PCM never clips."""
    from interaction_jax.features.mel import mel_to_audio

    mel = np.random.RandomState(0).uniform(0.0, 2.0, (20, 80)).astype(np.float32)
    wav = mel_to_audio(mel, n_iter=2)
    assert 0.5 < np.abs(wav).max() <= 0.9 + 1e-6
    pcm, _ = sf.read(save_wav(tmp_path / "m.wav", wav, 16000), dtype="int16")
    assert np.abs(pcm.astype(np.int32)).max() < 32767


def test_on_input_clock_is_exactly_the_input_length():
    speech = np.ones(1000, np.float32)
    out = on_input_clock(speech, 0.01, 16000, 900)  # starts 160 samples in, cut at the input's end
    assert out.shape == (900,) and not out[:160].any() and out[160:].all()
    short = on_input_clock(speech[:100], 0.0, 16000, 300)
    assert short.shape == (300,) and short[:100].all() and not short[100:].any()
    assert on_input_clock(speech, 1.0, 16000, 100).shape == (100,)  # starts after the end: silence


def _warnings(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if "warning" in line]


def test_a_wav_cut_short_is_read_with_one_warning_naming_it(tmp_path, capsys):
    path = str(tmp_path / "cut.wav")
    sf.write(path, np.zeros(16000, np.float32), 16000, subtype="PCM_16")  # 44-byte header + 32,000 bytes
    data = open(path, "rb").read()
    assert data[36:40] == b"data" and int.from_bytes(data[40:44], "little") == 32000  # the RIFF layout
    open(path, "wb").write(data[: 44 + 10000])
    audio = load_audio(path)
    lines = _warnings(capsys)
    assert len(lines) == 1 and path in lines[0], lines
    assert "promises 32000 bytes of audio but the file holds 10000" in lines[0]
    assert len(audio) == 5000
    load_audio(open(path, "rb").read())  # the same bytes from memory
    assert len(_warnings(capsys)) == 1


def test_a_float_wav_far_above_full_scale_warns(tmp_path, capsys):
    path = str(tmp_path / "loud.wav")
    t = np.arange(8000) / 16000
    sf.write(path, (50 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 16000, subtype="FLOAT")
    load_audio(path)
    lines = _warnings(capsys)
    assert len(lines) == 1 and path in lines[0] and "50.0x full scale" in lines[0], lines
    sf.write(path, (1.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 16000, subtype="FLOAT")
    load_audio(path)  # a little over full scale (common after processing): no warning
    sf.write(path, np.full(8000, 0.5, np.float32), 16000, subtype="PCM_16")
    load_audio(path)  # a well-formed file: no warning
    assert _warnings(capsys) == []
