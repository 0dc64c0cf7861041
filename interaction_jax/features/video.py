"""Video frames -> 40x40x3 patches for the hMLP stem.

A frame is resized so its shorter side is `frame_size` (bilinear, PIL; aspect ratio kept),
centre-cropped to a square (odd leftovers drop one more row/column at the bottom/right), and
cut into (frame_size / patch_size)^2 patches in row-major order: with n = frame_size //
patch_size, patch i * n + j covers rows [i*p, (i+1)*p) and columns [j*p, (j+1)*p).
"""

from __future__ import annotations

import numpy as np


def _check_sizes(frame_size: int, patch_size: int) -> None:
    if frame_size <= 0 or patch_size <= 0:
        raise ValueError(f"frame_size={frame_size} and patch_size={patch_size} must be positive")
    if frame_size % patch_size:
        raise ValueError(f"frame_size={frame_size} must be a multiple of patch_size={patch_size}")


def _check_frame(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3:
        raise ValueError(f"video frame must be an HxWx3 array, got {image.ndim}-D shape {image.shape}")
    if image.shape[-1] != 3:
        raise ValueError(f"video frame must have 3 (RGB) channels last, got {image.shape[-1]} in shape {image.shape}")
    if image.dtype != np.uint8:
        raise ValueError(f"video frame must be uint8, got {image.dtype} (scale floats to 0..255 first)")
    if min(image.shape[:2]) < 1:
        raise ValueError(f"video frame is empty: shape {image.shape}")
    return image


def resize_and_crop(image: np.ndarray, frame_size: int) -> np.ndarray:
    """HxWx3 uint8 -> frame_size x frame_size x 3: shorter side to frame_size, then centre crop."""
    image = _check_frame(image)
    if frame_size <= 0:
        raise ValueError(f"frame_size={frame_size} must be positive")
    h, w = image.shape[:2]
    scale = frame_size / min(h, w)
    nh, nw = max(frame_size, round(h * scale)), max(frame_size, round(w * scale))
    if (nh, nw) != (h, w):
        from PIL import Image

        image = np.asarray(Image.fromarray(image).resize((nw, nh), Image.BILINEAR))
    top, left = (nh - frame_size) // 2, (nw - frame_size) // 2
    return np.ascontiguousarray(image[top : top + frame_size, left : left + frame_size])


def frame_to_patches(image: np.ndarray, frame_size: int = 160, patch_size: int = 40) -> np.ndarray:
    """[N, patch_size, patch_size, 3] uint8 patches in row-major order, N = (frame_size / patch_size)^2."""
    _check_sizes(frame_size, patch_size)
    frame = resize_and_crop(image, frame_size)
    n = frame_size // patch_size
    p = frame.reshape(n, patch_size, n, patch_size, 3).transpose(0, 2, 1, 3, 4)
    return np.ascontiguousarray(p.reshape(n * n, patch_size, patch_size, 3))


DELTA_ZERO = 128  # the stored value of "no change" in a delta channel


def with_delta(patches: np.ndarray, previous: np.ndarray | None) -> np.ndarray:
    """[..., p, p, 3] uint8 RGB -> [..., p, p, 6]: the RGB and its change since `previous` (same shape;
    None: no earlier frame, zero change), stored as uint8 `(now - before) // 2 + DELTA_ZERO` (0..255)."""
    patches = np.asarray(patches)
    if patches.dtype != np.uint8 or patches.shape[-1] != 3:
        raise ValueError(f"with_delta: expected uint8 RGB patches [..., 3], got {patches.dtype} {patches.shape}")
    if previous is None:
        delta = np.full(patches.shape, DELTA_ZERO, np.uint8)
    else:
        previous = np.asarray(previous)
        if previous.shape != patches.shape or previous.dtype != np.uint8:
            raise ValueError(f"with_delta: previous patches {previous.dtype} {previous.shape} do not match "
                             f"{patches.dtype} {patches.shape}")
        delta = ((patches.astype(np.int16) - previous.astype(np.int16)) // 2 + DELTA_ZERO).astype(np.uint8)
    return np.concatenate([patches, delta], axis=-1)


def patches_to_frame(patches: np.ndarray, frame_size: int = 160) -> np.ndarray:
    """Inverse of `frame_to_patches`: [N, p, p, 3] row-major patches -> frame_size x frame_size x 3."""
    patches = np.asarray(patches)
    if patches.ndim == 4 and patches.shape[3] == 6:  # `with_delta` patches: the RGB half
        patches = patches[..., :3]
    if patches.ndim != 4 or patches.shape[1] != patches.shape[2] or patches.shape[3] != 3:
        raise ValueError(f"patches must be [N, p, p, 3], got shape {patches.shape}")
    n2, p = patches.shape[0], patches.shape[1]
    _check_sizes(frame_size, p)
    n = frame_size // p
    if n * n != n2:
        raise ValueError(f"{n2} patches of {p}px do not tile a {frame_size}px frame (need {n * n})")
    return patches.reshape(n, n, p, p, 3).transpose(0, 2, 1, 3, 4).reshape(frame_size, frame_size, 3)
