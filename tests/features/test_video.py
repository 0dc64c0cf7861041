"""Video frames -> row-major 40x40 patches and back."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from interaction_jax.features.video import frame_to_patches, patches_to_frame


def _rand(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_patches_are_row_major_and_invert():
    img = _rand(160, 160)
    p = frame_to_patches(img)
    assert p.shape == (16, 40, 40, 3) and p.dtype == np.uint8
    for i, j in [(0, 0), (1, 2), (3, 3), (2, 0)]:
        np.testing.assert_array_equal(p[i * 4 + j], img[40 * i : 40 * (i + 1), 40 * j : 40 * (j + 1)])
    np.testing.assert_array_equal(patches_to_frame(p, 160), img)


@settings(max_examples=25, deadline=None)
@given(st.sampled_from([(160, 40), (160, 80), (120, 40), (80, 20)]), st.integers(0, 2**31 - 1))
def test_round_trip_for_already_sized_frames(sizes, seed):
    f, ps = sizes
    img = _rand(f, f, seed)
    p = frame_to_patches(img, f, ps)
    assert p.shape == ((f // ps) ** 2, ps, ps, 3)
    np.testing.assert_array_equal(patches_to_frame(p, f), img)


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 400), st.integers(1, 400), st.integers(0, 255))
def test_any_frame_size_gives_fixed_patches(h, w, value):
    p = frame_to_patches(np.full((h, w, 3), value, np.uint8), 80, 40)
    assert p.shape == (4, 40, 40, 3) and (p == value).all()


def test_non_square_frame_is_centre_cropped():
    img = _rand(160, 240)
    np.testing.assert_array_equal(patches_to_frame(frame_to_patches(img)), img[:, 40:200])
    tall = _rand(250, 160, seed=1)  # odd leftover: 45 rows off the top, 45 off the bottom
    np.testing.assert_array_equal(patches_to_frame(frame_to_patches(tall)), tall[45:205])


def test_larger_frame_is_downscaled_then_cropped():
    img = np.zeros((320, 480, 3), np.uint8)
    img[:, 60:420] = 200  # -> 160x240, cropped to resized columns 40:200, inside the flat 30:210
    img[:, :60] = 10
    p = frame_to_patches(img)
    assert (p == 200).all()


@pytest.mark.parametrize(
    "img,match",
    [
        (np.zeros((160, 160), np.uint8), "HxWx3"),
        (np.zeros((2, 160, 160, 3), np.uint8), "HxWx3"),
        (np.zeros((160, 160, 4), np.uint8), "3 \\(RGB\\) channels"),
        (np.zeros((160, 160, 1), np.uint8), "3 \\(RGB\\) channels"),
        (np.zeros((160, 160, 3), np.float32), "uint8"),
        (np.zeros((0, 160, 3), np.uint8), "empty"),
    ],
)
def test_bad_frames_are_rejected(img, match):
    with pytest.raises(ValueError, match=match):
        frame_to_patches(img)


def test_bad_sizes_are_rejected():
    img = np.zeros((160, 160, 3), np.uint8)
    with pytest.raises(ValueError, match="multiple"):
        frame_to_patches(img, 150, 40)
    with pytest.raises(ValueError, match="positive"):
        frame_to_patches(img, 0, 40)
    with pytest.raises(ValueError, match="do not tile"):
        patches_to_frame(np.zeros((15, 40, 40, 3), np.uint8), 160)
    with pytest.raises(ValueError, match=r"\[N, p, p, 3\]"):
        patches_to_frame(np.zeros((16, 40, 30, 3), np.uint8), 160)
