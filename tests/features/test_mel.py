"""log-mel / dMel against direct numpy formulas (Bai et al. 2024 settings)."""

import librosa
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from interaction_jax.features.mel import FeatureParams, dmel_decode, dmel_encode, log_mel, mel_to_audio

P = FeatureParams()


def direct_log_mel(audio, frames):
    """Independent formula: reflect-pad n_fft/2, Hann(800) centred in 1024, |rfft|, mel, floor, log10."""
    pad = P.n_fft // 2
    x = np.pad(audio.astype(np.float64), pad, mode="reflect")
    win = np.zeros(P.n_fft)
    n = np.arange(P.win_length)
    off = (P.n_fft - P.win_length) // 2
    win[off : off + P.win_length] = 0.5 - 0.5 * np.cos(2 * np.pi * n / P.win_length)  # periodic Hann
    fb = librosa.filters.mel(sr=16000, n_fft=1024, n_mels=80, fmin=80, fmax=7600)
    out = []
    for k in frames:
        seg = x[k * P.hop_length : k * P.hop_length + P.n_fft] * win
        mag = np.abs(np.fft.rfft(seg))
        out.append(np.log10(np.maximum(fb @ mag, 1e-10)))
    return np.array(out)


def test_log_mel_matches_direct_formula():
    rng = np.random.default_rng(0)
    t = np.arange(16000) / 16000
    audio = (0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(16000)).astype(np.float32)
    got = log_mel(audio)
    assert got.shape == (1 + 16000 // 200, 80) and got.dtype == np.float32
    frames = [0, 1, 7, 40, 80]
    np.testing.assert_allclose(got[frames], direct_log_mel(audio, frames), atol=2e-3)


def test_frame_rate_is_80_per_second():
    assert P.frame_rate == 80.0
    assert log_mel(np.zeros(8000, np.float32)).shape[0] == 41  # 0.5 s -> 1 + 40 frames (centred)


def test_silence_is_dmel_code_zero():
    codes = dmel_encode(log_mel(np.zeros(4000, np.float32)))
    assert (codes == 0).all()


def test_dmel_encode_is_nearest_centre_with_clamping():
    x = np.linspace(-12, 5, 997).astype(np.float32)  # avoids exact bin midpoints (ties)
    centres = -7 + 0.6 * np.arange(16)
    brute = np.argmin(np.abs(np.clip(x, -7, 2)[:, None] - centres[None, :]), axis=1)
    np.testing.assert_array_equal(dmel_encode(x), brute)
    assert dmel_encode(np.array([-100.0]))[0] == 0 and dmel_encode(np.array([100.0]))[0] == 15


@settings(max_examples=25, deadline=None)
@given(st.lists(st.floats(-10, 4, allow_nan=False), min_size=1, max_size=64))
def test_dmel_round_trip_error_is_at_most_half_a_bin(values):
    x = np.array(values, np.float32)
    err = np.abs(dmel_decode(dmel_encode(x)) - np.clip(x, -7, 2))
    assert err.max() <= 0.3 + 1e-5


def test_dmel_decode_rejects_out_of_range_codes():
    with pytest.raises(ValueError, match=r"\[0, 16\)"):
        dmel_decode(np.array([16]))


def test_griffin_lim_returns_a_finite_waveform_of_the_right_length():
    t = np.arange(8000) / 16000
    audio = (0.5 * np.sin(2 * np.pi * 300 * t)).astype(np.float32)
    lm = log_mel(audio)
    wav = mel_to_audio(lm, n_iter=8)
    assert wav.shape == ((lm.shape[0] - 1) * 200,) and np.isfinite(wav).all() and np.abs(wav).max() > 0.01


def test_log_mel_rejects_bad_audio():
    with pytest.raises(ValueError, match="mono"):
        log_mel(np.zeros((10, 2), np.float32))
    with pytest.raises(ValueError, match="NaN"):
        log_mel(np.array([0.0, np.nan] * 600, np.float32))
