"""The numpy STFT / inverse STFT / fast Griffin-Lim against librosa's (the independent reference)."""

import librosa
import numpy as np
import pytest

from interaction_jax.features import griffin_lim as gl
from interaction_jax.features.mel import FeatureParams, log_mel, mel_to_audio

KW = dict(n_fft=1024, hop_length=200, win_length=800)  # the feature front end's framing


def _clips(n=3, samples=200 * 19, seed=1):
    return np.random.RandomState(seed).randn(n, samples).astype(np.float32)


def test_stft_matches_librosa():
    y = _clips()
    ours = gl.stft(y, **KW)
    ref = np.stack([librosa.stft(c, **KW) for c in y])  # center=True, zero padding, periodic Hann
    assert ours.shape == ref.shape == (3, 513, 20)
    np.testing.assert_allclose(ours, ref, atol=1e-4 * np.abs(ref).max())


def test_istft_matches_librosa_and_inverts_stft():
    y = _clips()
    spec = np.stack([librosa.stft(c, **KW) for c in y])
    ours = gl.istft(spec, length=y.shape[1], **KW)
    ref = np.stack([librosa.istft(s, length=y.shape[1], **KW) for s in spec])
    np.testing.assert_allclose(ours, ref, atol=1e-5 * np.abs(ref).max())
    np.testing.assert_allclose(ours, y, atol=1e-4)  # perfect reconstruction
    longer = gl.istft(spec, length=y.shape[1] + 300, **KW)  # asked for more: the signal, then ~0
    assert longer.shape == (3, y.shape[1] + 300)
    np.testing.assert_array_equal(longer[:, :y.shape[1]], ours)
    assert np.abs(longer[:, y.shape[1]:]).max() < 1e-5


@pytest.mark.parametrize("n_iter", [0, 1, 8])
def test_griffin_lim_matches_librosa(n_iter):
    y = _clips()
    mag = np.abs(np.stack([librosa.stft(c, **KW) for c in y]))
    ours = gl.griffin_lim(mag, length=y.shape[1], n_iter=n_iter, **KW)
    ref = np.stack([librosa.griffinlim(m, n_iter=n_iter, random_state=0, length=y.shape[1], **KW) for m in mag])
    np.testing.assert_allclose(ours, ref, atol=1e-4 * np.abs(ref).max())


def test_a_clip_in_a_batch_is_the_clip_alone():
    mag = np.abs(gl.stft(_clips(4), **KW))
    batch = gl.griffin_lim(mag, length=3800, n_iter=4, **KW)
    for i in range(4):
        np.testing.assert_array_equal(batch[i], gl.griffin_lim(mag[i], length=3800, n_iter=4, **KW))


def test_griffin_lim_approaches_the_magnitude():
    """More iterations: the re-analysed magnitude is closer to the target (spectral convergence)."""
    t = np.arange(16000) / 16000
    y = (0.5 * np.sin(2 * np.pi * 220 * t) * (t < 0.6) + 0.3 * np.sin(2 * np.pi * 660 * t)).astype(np.float32)
    mag = np.abs(gl.stft(y, **KW))

    def error(n_iter):
        rec = gl.griffin_lim(mag, length=len(y), n_iter=n_iter, **KW)
        return np.linalg.norm(np.abs(gl.stft(rec, **KW)) - mag) / np.linalg.norm(mag)

    e0, e8, e32 = error(0), error(8), error(32)
    assert e32 < e8 < e0 and e32 < 0.2


def test_mel_to_audio_batch_equals_each_clip():
    p = FeatureParams()
    mels = np.stack([log_mel(c, p) for c in _clips(3, 4000)])
    batch = mel_to_audio(mels, p, n_iter=3)
    assert batch.shape == (3, (mels.shape[1] - 1) * p.hop_length)
    for i in range(3):
        np.testing.assert_array_equal(batch[i], mel_to_audio(mels[i], p, n_iter=3))


def test_bad_shapes_name_the_expected_one():
    with pytest.raises(ValueError, match=r"\[\.\.\., 513, frames\]"):
        gl.griffin_lim(np.zeros((10, 20)), length=100, **KW)
    with pytest.raises(ValueError, match="clips, frames"):
        mel_to_audio(np.zeros((2, 2, 5, 80)))


def test_a_zero_analysis_under_a_loud_target_stays_zero_not_nan():
    """The phase step where the re-analysis is (near) zero and the target magnitude is large: the
    unit-phase times magnitude of librosa's update (0 there), never 0 x inf (NaN) from a ratio."""
    angles = np.array([0.0, 1e-30 + 0j, 3.0 + 4.0j], np.complex64)
    mag = np.array([1e6, 1e6, 2.0], np.float32)
    got = gl.with_magnitude(angles.copy(), mag)
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, [0.0, 1e6, 1.2 + 1.6j], rtol=1e-5)
