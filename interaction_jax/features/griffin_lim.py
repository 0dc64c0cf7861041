"""Batched STFT / inverse STFT and fast Griffin-Lim in numpy (the vocoder of the model's mel).

Why not `librosa.griffinlim`: it inverts one clip per call, with per-call Python overhead in
every STFT, and a server vocodes every session's 200 ms of speech each micro-turn. Here every
clip of a batch goes through each FFT together, with the window and its overlap-added square computed once per shape.

Conventions follow librosa's defaults (tested against it): a periodic Hann window of
`win_length` centred in `n_fft`, `center=True` with zero padding of n_fft // 2 on both sides,
inverse normalised by the window's overlap-added square; the "fast" Griffin-Lim update
(Perraudin et al., 2013) with momentum 0.99 and random initial phase from
`np.random.RandomState(seed)` drawn per clip (so one clip alone and the same clip in a batch
give the same waveform).
"""

from __future__ import annotations

import functools

import numpy as np
import scipy.fft


@functools.lru_cache(maxsize=16)
def _window(n_fft: int, win_length: int) -> np.ndarray:
    """Periodic Hann window of win_length, zero-padded to n_fft (centred), float64."""
    n = np.arange(win_length)
    w = 0.5 - 0.5 * np.cos(2.0 * np.pi * n / win_length)
    left = (n_fft - win_length) // 2
    return np.pad(w, (left, n_fft - win_length - left))


@functools.lru_cache(maxsize=16)
def _window32(n_fft: int, win_length: int) -> np.ndarray:
    return _window(n_fft, win_length).astype(np.float32)


@functools.lru_cache(maxsize=16)
def _frame_index(n_frames: int, n_fft: int, hop: int) -> np.ndarray:
    return hop * np.arange(n_frames)[:, None] + np.arange(n_fft)[None, :]


@functools.lru_cache(maxsize=16)
def _window_sumsquare(n_frames: int, n_fft: int, hop: int, win_length: int) -> np.ndarray:
    """Overlap-added squared window over n_frames frames (the inverse's normaliser)."""
    w2 = _window(n_fft, win_length) ** 2
    out = np.zeros(n_fft + hop * (n_frames - 1))
    for t in range(n_frames):  # the same overlap-add as `_synthesise`
        out[t * hop:t * hop + n_fft] += w2
    return out


def _analyse(y: np.ndarray, n_fft: int, hop: int, win_length: int) -> np.ndarray:
    """y [..., N] -> complex64 [..., frames, F] (frames-major: the layout the FFTs want)."""
    yp = np.pad(np.asarray(y, np.float32), [(0, 0)] * (np.ndim(y) - 1) + [(n_fft // 2, n_fft // 2)])
    n_frames = 1 + (yp.shape[-1] - n_fft) // hop
    frames = yp[..., _frame_index(n_frames, n_fft, hop)] * _window32(n_fft, win_length)
    return scipy.fft.rfft(frames, axis=-1).astype(np.complex64, copy=False)


def _synthesise(spec_tf: np.ndarray, n_fft: int, hop: int, win_length: int, length: int) -> np.ndarray:
    """complex [..., frames, F] -> float32 [..., length]: overlap-add of the windowed inverse FFTs."""
    n_frames = spec_tf.shape[-2]
    frames = scipy.fft.irfft(spec_tf, n=n_fft, axis=-1).astype(np.float32, copy=False)
    frames *= _window32(n_fft, win_length)
    out = np.zeros(spec_tf.shape[:-2] + (n_fft + hop * (n_frames - 1),), np.float32)
    for t in range(n_frames):  # frames overlap, so add them one at a time (n_frames is small)
        out[..., t * hop:t * hop + n_fft] += frames[..., t, :]
    out *= _inverse_norm(n_frames, n_fft, hop, win_length)
    out = out[..., n_fft // 2:n_fft // 2 + length]
    if out.shape[-1] < length:
        out = np.pad(out, [(0, 0)] * (out.ndim - 1) + [(0, length - out.shape[-1])])
    return out


@functools.lru_cache(maxsize=16)
def _inverse_norm(n_frames: int, n_fft: int, hop: int, win_length: int) -> np.ndarray:
    """1 / the overlap-added squared window where it is not ~0, else 1 (float32)."""
    wss = _window_sumsquare(n_frames, n_fft, hop, win_length)
    tiny = np.finfo(np.float32).tiny
    return np.where(wss > tiny, 1.0 / np.where(wss > tiny, wss, 1.0), 1.0).astype(np.float32)


def stft(y: np.ndarray, *, n_fft: int, hop_length: int, win_length: int) -> np.ndarray:
    """y [..., N] real -> complex64 [..., n_fft // 2 + 1, frames], frames = 1 + N // hop."""
    return np.swapaxes(_analyse(y, n_fft, hop_length, win_length), -1, -2)


def istft(spec: np.ndarray, *, n_fft: int, hop_length: int, win_length: int, length: int) -> np.ndarray:
    """complex [..., F, frames] -> float32 [..., length] (the inverse of `stft` up to rounding)."""
    return _synthesise(np.swapaxes(np.asarray(spec), -1, -2), n_fft, hop_length, win_length, length)


def griffin_lim(magnitude: np.ndarray, *, n_fft: int, hop_length: int, win_length: int, length: int,
                n_iter: int = 32, momentum: float = 0.99, seed: int = 0) -> np.ndarray:
    """Waveforms float32 [..., length] whose STFT magnitude approximates `magnitude` [..., F, frames].

    Fast Griffin-Lim: each iteration inverts the current complex estimate, re-analyses it, and
    takes the new phase with momentum against the previous analysis.
    """
    mag = np.asarray(magnitude, np.float32)
    if mag.ndim < 2 or mag.shape[-2] != n_fft // 2 + 1:
        raise ValueError(f"griffin_lim expects [..., {n_fft // 2 + 1}, frames], got shape {mag.shape}")
    if n_iter < 0 or not 0 <= momentum <= 1:
        raise ValueError(f"griffin_lim: need n_iter >= 0 and 0 <= momentum <= 1, got {n_iter}, {momentum}")
    phase0 = np.random.RandomState(seed).random_sample(mag.shape[-2:])  # drawn as librosa does: [F, frames]
    mag_tf = np.ascontiguousarray(np.swapaxes(mag, -1, -2))
    angles = np.exp(2j * np.pi * phase0.T).astype(np.complex64) * mag_tf
    args = (n_fft, hop_length, win_length)
    previous = None
    for _ in range(n_iter):
        rebuilt = _analyse(_synthesise(angles, *args, length), *args)
        angles = rebuilt.copy() if previous is None else rebuilt - np.float32(momentum / (1 + momentum)) * previous
        with_magnitude(angles, mag_tf)
        previous = rebuilt
    return _synthesise(angles, *args, length)


def with_magnitude(angles: np.ndarray, magnitude: np.ndarray) -> np.ndarray:
    """`angles` (complex, in place) set to `magnitude` with their own phase; 0 where they are 0.

    Normalised first, then scaled: a ratio magnitude / |angle| overflows float32 where the analysis
    is (near) zero under a loud target, and 0 x inf is NaN (seen on a trained model's output)."""
    angles /= np.abs(angles) + np.finfo(np.float32).tiny
    angles *= magnitude
    return angles
