"""Video frames -> 40x40x3 patches for the hMLP stem.

A frame is resized so its shorter side is `frame_size` (bilinear, PIL), centre-cropped to a
square, and cut into (frame_size / patch_size)^2 patches in row-major order: patch i*n + j
covers rows [i*p, (i+1)*p) and columns [j*p, (j+1)*p).
"""

from __future__ import annotations

import numpy as np


def _check_frame(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"video frame must be HxWx3 (RGB), got shape {image.shape}")
    if image.dtype != np.uint8:
        raise ValueError(f"video frame must be uint8, got {image.dtype} (scale floats to 0..255 first)")
    if min(image.shape[:2]) < 1:
        raise ValueError(f"video frame is empty: shape {image.shape}")
    return image


def resize_and_crop(image: np.ndarray, frame_size: int) -> np.ndarray:
    """Shorter side -> frame_size, then centre crop to frame_size x frame_size."""
    image = _check_frame(image)
    h, w = image.shape[:2]
    if (h, w) != (frame_size, frame_size):
        scale = frame_size / min(h, w)
        nh, nw = max(frame_size, round(h * scale)), max(frame_size, round(w * scale))
        if (nh, nw) != (h, w):
            from PIL import Image

            image = np.asarray(Image.fromarray(image).resize((nw, nh), Image.BILINEAR))
        top, left = (nh - frame_size) // 2, (nw - frame_size) // 2
        image = image[top : top + frame_size, left : left + frame_size]
    return np.ascontiguousarray(image)


def frame_to_patches(image: np.ndarray, frame_size: int = 160, patch_size: int = 40) -> np.ndarray:
    """[N, patch_size, patch_size, 3] uint8 patches (row-major), N = (frame_size / patch_size)^2."""
    if frame_size % patch_size:
        raise ValueError(f"frame_size={frame_size} must be a multiple of patch_size={patch_size}")
    frame = resize_and_crop(image, frame_size)
    n = frame_size // patch_size
    p = frame.reshape(n, patch_size, n, patch_size, 3).transpose(0, 2, 1, 3, 4)
    return p.reshape(n * n, patch_size, patch_size, 3)


def patches_to_frame(patches: np.ndarray, frame_size: int = 160) -> np.ndarray:
    """Inverse of `frame_to_patches` (for plots and tests)."""
    patches = np.asarray(patches)
    n2, p = patches.shape[0], patches.shape[1]
    n = frame_size // p
    if n * n != n2:
        raise ValueError(f"{n2} patches of {p}px do not tile a {frame_size}px frame")
    return patches.reshape(n, n, p, p, 3).transpose(0, 2, 1, 3, 4).reshape(frame_size, frame_size, 3)
