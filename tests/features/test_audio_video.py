"""Audio loading (resampling, channels, errors) and video patching."""

import numpy as np
import pytest
import soundfile as sf
from hypothesis import given, settings
from hypothesis import strategies as st

from interaction_jax.features.audio import AudioError, ensure_audio, load_audio, load_stereo, save_wav
from interaction_jax.features.video import frame_to_patches, patches_to_frame


@pytest.mark.parametrize("sr", [8000, 44100])
def test_load_audio_resamples_to_16k(tmp_path, sr):
    t = np.arange(sr) / sr
    path = tmp_path / "a.wav"
    sf.write(path, 0.5 * np.sin(2 * np.pi * 200 * t), sr)
    out = load_audio(str(path))
    assert out.dtype == np.float32 and abs(len(out) - 16000) <= 2
    spec = np.abs(np.fft.rfft(out))
    assert abs(np.argmax(spec) * 16000 / len(out) - 200) < 3  # the tone survives resampling


def test_stereo_needs_explicit_mixing(tmp_path):
    path = tmp_path / "s.wav"
    sf.write(path, np.stack([np.full(1600, 0.2), np.full(1600, -0.4)], 1), 16000)
    with pytest.raises(AudioError, match="2 channels"):
        load_audio(str(path))
    np.testing.assert_allclose(load_audio(str(path), mono="mix"), -0.1, atol=1e-4)
    st_ = load_stereo(str(path))
    assert st_.shape == (2, 1600)


def test_clear_errors_for_empty_corrupt_and_missing(tmp_path):
    empty = tmp_path / "e.wav"
    sf.write(empty, np.zeros(0), 16000)
    with pytest.raises(AudioError, match="no samples|empty"):
        load_audio(str(empty))
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF not really a wav")
    with pytest.raises(AudioError, match="cannot decode"):
        load_audio(str(bad))
    with pytest.raises(AudioError, match="does not exist"):
        load_audio(str(tmp_path / "missing.wav"))
    with pytest.raises(AudioError, match="NaN"):
        ensure_audio(np.array([0.0, np.inf]), 16000)


def test_save_wav_round_trip(tmp_path):
    x = (0.25 * np.sin(np.arange(1600) / 5)).astype(np.float32)
    p = save_wav(str(tmp_path / "o.wav"), x, 16000)
    np.testing.assert_allclose(load_audio(p), x, atol=1e-4)
    assert not [f for f in tmp_path.iterdir() if f.name.endswith(".tmp")]


def test_patches_row_major_and_inverse():
    img = np.random.default_rng(0).integers(0, 255, (160, 160, 3), dtype=np.uint8)
    p = frame_to_patches(img, 160, 40)
    assert p.shape == (16, 40, 40, 3)
    np.testing.assert_array_equal(p[1 * 4 + 2], img[40:80, 80:120])  # patch (i=1, j=2)
    np.testing.assert_array_equal(patches_to_frame(p, 160), img)


@settings(max_examples=15, deadline=None)
@given(st.integers(80, 300), st.integers(80, 300))
def test_any_frame_size_gives_fixed_patches(h, w):
    img = np.full((h, w, 3), 7, np.uint8)
    p = frame_to_patches(img, 80, 40)
    assert p.shape == (4, 40, 40, 3) and (p == 7).all()


def test_non_square_frame_is_centre_cropped():
    img = np.zeros((160, 240, 3), np.uint8)
    img[:, 40:200] = 255  # the centre 160 columns are white
    assert (frame_to_patches(img, 160, 40) == 255).all()


@pytest.mark.parametrize(
    "img,match",
    [
        (np.zeros((160, 160), np.uint8), "HxWx3"),
        (np.zeros((160, 160, 4), np.uint8), "HxWx3"),
        (np.zeros((160, 160, 3), np.float32), "uint8"),
    ],
)
def test_bad_frames_are_rejected(img, match):
    with pytest.raises(ValueError, match=match):
        frame_to_patches(img)
    with pytest.raises(ValueError, match="multiple"):
        frame_to_patches(np.zeros((160, 160, 3), np.uint8), 150, 40)
