"""log-mel / dMel against direct numpy formulas (Bai et al. 2024 settings)."""

import warnings

import librosa
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from interaction_jax.config_lib import base_config
from interaction_jax.features.mel import FeatureParams, dmel_decode, dmel_encode, log_mel, mel_to_audio

P = FeatureParams()


def direct_log_mel(audio, frames):
    """Independent formula: reflect-pad n_fft/2, periodic Hann(800) centred in 1024, |rfft|, mel, floor, log10."""
    x = np.pad(audio.astype(np.float64), 512, mode="reflect")
    win = np.zeros(1024)
    off = (1024 - 800) // 2
    win[off : off + 800] = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(800) / 800)
    fb = librosa.filters.mel(sr=16000, n_fft=1024, n_mels=80, fmin=80, fmax=7600)  # slaney, htk=False
    out = []
    for k in frames:
        mag = np.abs(np.fft.rfft(x[k * 200 : k * 200 + 1024] * win))  # magnitude, not power
        out.append(np.log10(np.maximum(fb @ mag, 1e-10)))
    return np.array(out)


def _tone(n, seed=0):
    t = np.arange(n) / 16000
    noise = 0.05 * np.random.default_rng(seed).standard_normal(n)
    return (0.3 * np.sin(2 * np.pi * 440 * t) + noise).astype(np.float32)


def test_log_mel_matches_direct_formula():
    audio = _tone(16000)
    got = log_mel(audio)
    assert got.shape == (1 + 16000 // 200, 80) and got.dtype == np.float32
    frames = [0, 1, 7, 40, 79, 80]  # includes both reflect-padded edges
    np.testing.assert_allclose(got[frames], direct_log_mel(audio, frames), atol=2e-3)


def test_frame_rate_is_80_per_second():
    assert P.frame_rate == 80.0
    assert log_mel(np.zeros(8000, np.float32)).shape == (41, 80)  # 0.5 s -> 1 + 40 frames (centred)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 3000))
def test_frame_count_is_centred_for_any_length(n):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # short clips must not trip librosa's n_fft warning
        out = log_mel(_tone(n) if n else np.zeros(0, np.float32))
    assert out.shape == (P.num_frames(n), 80) and np.isfinite(out).all()


def test_from_config_matches_defaults():
    fp = FeatureParams.from_config(base_config().features)
    assert fp == P and isinstance(fp.sample_rate, int) and isinstance(fp.fmin, float)
    assert FeatureParams.from_config(None) == P
    assert FeatureParams.from_config({"n_mels": 40, "unrelated": 1}).n_mels == 40


@pytest.mark.parametrize("kw", [{"win_length": 2048}, {"fmax": 9000.0}, {"dmel_bins": 300}, {"hop_length": 0}])
def test_bad_params_fail_at_construction(kw):
    with pytest.raises(ValueError, match="FeatureParams"):
        FeatureParams(**kw)


def test_silence_is_dmel_code_zero_in_every_channel():
    lm = log_mel(np.zeros(4000, np.float32))
    np.testing.assert_allclose(lm, -10.0)  # log10(1e-10)
    codes = dmel_encode(lm)
    assert codes.shape == (21, 80) and codes.dtype == np.uint8 and (codes == 0).all()


def _brute_codes(x):
    centres = -7 + 0.6 * np.arange(16)
    return np.argmin(np.abs(np.clip(x, -7, 2)[..., None] - centres), axis=-1)


def test_dmel_encode_is_nearest_centre_with_clamping():
    x = np.linspace(-12, 5, 997).astype(np.float32)  # avoids exact bin midpoints (ties)
    np.testing.assert_array_equal(dmel_encode(x), _brute_codes(x))
    ends = dmel_encode(np.array([-100.0, -7.2, -7.0, 2.0, 2.2, 100.0, -np.inf, np.inf]))
    np.testing.assert_array_equal(ends, [0, 0, 0, 15, 15, 15, 0, 15])


def test_dmel_encode_on_real_log_mel_matches_brute_force():
    lm = log_mel(_tone(4000, seed=3))
    np.testing.assert_array_equal(dmel_encode(lm), _brute_codes(lm.astype(np.float64)))


@settings(max_examples=25, deadline=None)
@given(st.lists(st.floats(-12, 5, allow_nan=False), min_size=1, max_size=64))
def test_dmel_round_trip_error_is_at_most_half_a_bin(values):
    x = np.array(values, np.float32)
    dec = dmel_decode(dmel_encode(x))
    assert dec.dtype == np.float32
    assert np.abs(dec - np.clip(x, -7, 2)).max() <= 0.3 + 1e-5


def test_dmel_decode_is_bin_centres_and_validates():
    np.testing.assert_allclose(dmel_decode(np.arange(16, dtype=np.uint8)), -7 + 0.6 * np.arange(16), atol=1e-6)
    with pytest.raises(ValueError, match=r"\[0, 16\)"):
        dmel_decode(np.array([3, 16]))
    with pytest.raises(ValueError, match=r"\[0, 16\)"):
        dmel_decode(np.array([-1]))
    with pytest.raises(ValueError, match="integers"):
        dmel_decode(np.array([1.0]))
    with pytest.raises(ValueError, match="NaN"):
        dmel_encode(np.array([np.nan]))


def test_griffin_lim_returns_a_finite_waveform_of_the_right_length():
    lm = log_mel((0.5 * np.sin(2 * np.pi * 300 * np.arange(8000) / 16000)).astype(np.float32))
    wav = mel_to_audio(lm, n_iter=4)
    assert wav.shape == ((lm.shape[0] - 1) * 200,) and wav.dtype == np.float32
    assert np.isfinite(wav).all() and np.abs(wav).max() > 0.01
    assert mel_to_audio(lm[:5], n_iter=2, length=1000).shape == (1000,)
    assert mel_to_audio(dmel_decode(dmel_encode(lm[:5])), n_iter=2).shape == (800,)


def test_bad_inputs_are_rejected():
    with pytest.raises(ValueError, match="mono"):
        log_mel(np.zeros((10, 2), np.float32))
    with pytest.raises(ValueError, match="NaN"):
        log_mel(np.array([0.0, np.nan] * 600, np.float32))
    with pytest.raises(ValueError, match=r"\[frames, 80\]"):
        mel_to_audio(np.zeros((5, 40)))


def test_dmel_exact_ties_go_to_the_lower_bin_in_both_encoders():
    """Published dMel rule: the nearest centre, an exact tie to the lower bin. The numpy front end
    and the engine's jnp encoder are one rule: equal on every float32 value next to a midpoint."""
    import jax.numpy as jnp

    from interaction_jax.inference import sampling

    p = FeatureParams()
    centres = p.bin_centres
    assert dmel_encode(np.array([-0.1], np.float32))[0] == 11  # half to even would give 12
    mids = ((centres[:-1].astype(np.float64) + centres[1:]) / 2).astype(np.float32)
    near = np.concatenate([np.nextafter(mids, -np.inf), mids, np.nextafter(mids, np.inf)])
    x = np.concatenate([near, np.float32([-7.0, 2.0, -np.inf, np.inf, -30.0, 30.0])])
    # independent reference: float32 distances, first minimum (what an argmin over |x - centres| returns)
    d = np.abs(np.clip(x, centres[0], centres[-1])[:, None] - centres[None, :])
    ref = np.array([int(np.flatnonzero(row == row.min())[0]) for row in d])
    np.testing.assert_array_equal(dmel_encode(x), ref)
    np.testing.assert_array_equal(np.asarray(sampling.dmel_encode(jnp.asarray(x), p)), ref)
    ties = [i for i, row in enumerate(d) if (row == row.min()).sum() == 2]
    assert ties, "some float32 midpoints are exact ties"
    assert all(ref[i] == int(np.argsort(d[i], kind="stable")[0]) for i in ties)
