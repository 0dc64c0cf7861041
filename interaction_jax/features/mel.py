"""Log-mel and dMel exactly as Bai et al. 2024 ("dMel: Speech Tokenization made Simple").

16 kHz audio, 1024-point FFT, 800-sample (50 ms) Hann window (periodic, centred inside the
1024-point frame as librosa does), 200-sample (12.5 ms) hop, so 80 frames/s; centred frames
(`T = 1 + len(audio) // hop`, reflect padding by n_fft / 2); the *magnitude* spectrum (power 1,
not power 2); 80 mel bands from 80 to 7600 Hz; floor 1e-10; log10.

Filterbank choice: librosa.filters.mel defaults (Slaney mel scale, htk=False, norm="slaney",
i.e. each triangle has unit area). The paper uses the librosa defaults, and the dMel bin range
[-7, 2] was chosen for exactly this scaling: a different norm would shift every log value.

dMel quantises every channel independently to 16 bins with centres -7 + 0.6k (k = 0..15) after
clamping to [-7, 2]: 4 bits per channel, no learned codebook. Silence (log10(1e-10) = -10)
clamps to -7, i.e. code 0 in every channel.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any

import numpy as np


@dataclasses.dataclass(frozen=True)
class FeatureParams:
    """Signal-processing constants (defaults = the dMel paper); mirrors `config.features`."""

    sample_rate: int = 16000
    n_fft: int = 1024
    win_length: int = 800
    hop_length: int = 200
    n_mels: int = 80
    fmin: float = 80.0
    fmax: float = 7600.0
    dmel_bins: int = 16
    dmel_min: float = -7.0
    dmel_max: float = 2.0
    floor: float = 1e-10

    def __post_init__(self) -> None:
        # fail at construction, not deep inside librosa with an obscure message
        if min(self.sample_rate, self.n_fft, self.win_length, self.hop_length, self.n_mels) <= 0:
            raise ValueError(f"FeatureParams: sizes and rates must be positive: {self}")
        if self.win_length > self.n_fft:
            raise ValueError(f"FeatureParams: win_length={self.win_length} exceeds n_fft={self.n_fft}")
        if not 0 <= self.fmin < self.fmax <= self.sample_rate / 2:
            raise ValueError(
                f"FeatureParams: need 0 <= fmin < fmax <= sample_rate/2, got fmin={self.fmin}, "
                f"fmax={self.fmax}, sample_rate={self.sample_rate}"
            )
        if not 2 <= self.dmel_bins <= 256:
            raise ValueError(f"FeatureParams: dmel_bins={self.dmel_bins} must be in [2, 256] (uint8 codes)")
        if not self.dmel_min < self.dmel_max:
            raise ValueError(f"FeatureParams: dmel_min={self.dmel_min} must be < dmel_max={self.dmel_max}")
        if self.floor <= 0:
            raise ValueError(f"FeatureParams: floor={self.floor} must be positive")

    @classmethod
    def from_config(cls, fc: Mapping[str, Any] | None) -> FeatureParams:
        """From `config.features` (ConfigDict or dict); missing keys keep the defaults, extras are ignored."""
        if fc is None:
            return cls()
        kwargs = {}
        for f in dataclasses.fields(cls):
            if f.name in fc:
                kwargs[f.name] = type(f.default)(fc[f.name])
        return cls(**kwargs)

    @property
    def bin_width(self) -> float:
        return (self.dmel_max - self.dmel_min) / (self.dmel_bins - 1)

    @property
    def bin_centres(self) -> np.ndarray:
        return (self.dmel_min + self.bin_width * np.arange(self.dmel_bins)).astype(np.float32)

    @property
    def frame_rate(self) -> float:
        """Frames per second (80 for the defaults)."""
        return self.sample_rate / self.hop_length

    def num_frames(self, num_samples: int) -> int:
        """Centred framing: 1 + num_samples // hop (0 for empty audio)."""
        return 0 if num_samples <= 0 else 1 + num_samples // self.hop_length


@functools.lru_cache(maxsize=8)
def mel_filterbank(params: FeatureParams = FeatureParams()) -> np.ndarray:
    """[n_mels, 1 + n_fft // 2] librosa (Slaney) mel filterbank; cached per params."""
    import librosa

    fb = librosa.filters.mel(
        sr=params.sample_rate, n_fft=params.n_fft, n_mels=params.n_mels, fmin=params.fmin, fmax=params.fmax
    ).astype(np.float32)
    fb.setflags(write=False)  # shared through the cache
    return fb


def log_mel(audio: np.ndarray, params: FeatureParams = FeatureParams()) -> np.ndarray:
    """log10 magnitude mel spectrogram of mono audio at params.sample_rate: [1 + len // hop, n_mels] float32.

    Clips no longer than n_fft / 2 cannot be reflect-padded once, so they are zero-padded instead.
    """
    import librosa

    audio = np.asarray(audio, np.float32)
    if audio.ndim != 1:
        raise ValueError(f"log_mel expects mono 1-D audio, got shape {audio.shape}")
    if audio.size == 0:
        return np.zeros((0, params.n_mels), np.float32)
    if not np.isfinite(audio).all():
        raise ValueError("log_mel: audio contains NaN or inf")
    # centring done here (not center=True) so short clips need no librosa warning/special case
    pad = params.n_fft // 2
    padded = np.pad(audio, pad, mode="reflect" if audio.size > pad else "constant")
    spec = np.abs(
        librosa.stft(
            padded,
            n_fft=params.n_fft,
            hop_length=params.hop_length,
            win_length=params.win_length,
            window="hann",
            center=False,
        )
    )
    mel = mel_filterbank(params) @ spec
    out = np.log10(np.maximum(mel, params.floor)).T.astype(np.float32)
    assert out.shape[0] == params.num_frames(audio.size), (out.shape, audio.size)
    return out


DMEL_SILENCE_CODE = 0  # the bin of dmel_min: what silence (and anything quieter) encodes to


def dmel_codes(x, centres, xp=np):
    """The one dMel rule, for numpy (`xp=np`) and jax.numpy alike: after clamping to the first and
    last bin centre, the index of the nearest centre in float32, an exact tie going to the lower
    bin (the first minimum, as in the published dMel reference). uint8 codes, any shape."""
    x = xp.clip(x.astype(xp.float32), centres[0], centres[-1])
    return xp.argmin(xp.abs(x[..., None] - centres), axis=-1).astype(xp.uint8)


def dmel_encode(logmel: np.ndarray, params: FeatureParams = FeatureParams()) -> np.ndarray:
    """Nearest-bin-centre codes (uint8 in [0, dmel_bins)) after clamping to [dmel_min, dmel_max]; any shape.

    A value exactly halfway between two centres takes the lower code (`dmel_codes`); the engine's
    jnp encoder (`inference.sampling.dmel_encode`) applies the same function.
    """
    x = np.asarray(logmel, np.float32)
    if np.isnan(x).any():
        raise ValueError("dmel_encode: log-mel contains NaN")
    return dmel_codes(x, params.bin_centres)


def dmel_decode(codes: np.ndarray, params: FeatureParams = FeatureParams()) -> np.ndarray:
    """float32 log-mel values at the bin centres; codes must be integers in [0, dmel_bins)."""
    codes = np.asarray(codes)
    if not (np.issubdtype(codes.dtype, np.integer) or codes.dtype == np.bool_):
        raise ValueError(f"dmel_decode: codes must be integers, got dtype {codes.dtype}")
    if codes.size and (codes.min() < 0 or codes.max() >= params.dmel_bins):
        raise ValueError(
            f"dmel_decode: codes must lie in [0, {params.dmel_bins}), got values in [{codes.min()}, {codes.max()}]"
        )
    return params.bin_centres[codes.astype(np.int64)]


@functools.lru_cache(maxsize=8)
def _mel_pinv(params: FeatureParams) -> np.ndarray:
    return np.linalg.pinv(mel_filterbank(params).astype(np.float64))


def mel_to_audio(
    logmel: np.ndarray,
    params: FeatureParams = FeatureParams(),
    *,
    n_iter: int = 32,
    length: int | None = None,
    peak: float | None = None,
) -> np.ndarray:
    """Waveform (float32, params.sample_rate) from a [T, n_mels] log10 magnitude mel, by Griffin-Lim.

    A batch [clips, T, n_mels] gives [clips, samples] (each clip as if alone, vocoded together).

    For listening, not fidelity. Default length is (T - 1) * hop samples, i.e. the length of the
    clip that produced T frames rounded down to a whole hop; `length` trims or zero-pads to a
    requested number of samples. A single frame spans no whole hop, so it gives silence.
    The level is limited: a clip whose peak exceeds `peak` (default `audio.PEAK_LEVEL`, 0.9) is
    scaled down by one gain so that nothing clips when written as PCM (an untrained model's mel
    gives many times full scale); quieter clips are returned unchanged.
    """
    from interaction_jax.features.audio import PEAK_LEVEL, limit_peak
    from interaction_jax.features.griffin_lim import griffin_lim

    logmel = np.asarray(logmel, np.float32)
    if logmel.ndim not in (2, 3) or logmel.shape[-1] != params.n_mels:
        raise ValueError(f"mel_to_audio expects [frames, {params.n_mels}] or [clips, frames, {params.n_mels}], "
                         f"got shape {logmel.shape}")
    if not np.isfinite(logmel).all():
        raise ValueError("mel_to_audio: log-mel contains NaN or inf")
    clips = logmel if logmel.ndim == 3 else logmel[None]
    natural = max(0, clips.shape[1] - 1) * params.hop_length
    n = natural if length is None else int(length)
    if natural == 0 or n <= 0:
        out = np.zeros((clips.shape[0], max(n, 0)), np.float32)
        return out if logmel.ndim == 3 else out[0]
    # mel -> linear magnitude with the filterbank's pseudo-inverse (librosa's default NNLS solve
    # is an L-BFGS per frame block and takes minutes on long or untrained outputs), then
    # Griffin-Lim phase reconstruction of all clips at once (`griffin_lim.py`).
    mel = np.clip(np.power(10.0, np.swapaxes(clips, 1, 2).astype(np.float64)), 0.0, 1e6)
    linear = np.maximum(np.einsum("fm,bmt->bft", _mel_pinv(params), mel), 0.0).astype(np.float32)
    audio = griffin_lim(linear, n_iter=n_iter, hop_length=params.hop_length, win_length=params.win_length,
                        n_fft=params.n_fft, length=natural)  # a length that maps back to T frames; pad/trim after
    audio = np.stack([limit_peak(a, PEAK_LEVEL if peak is None else peak) for a in audio])
    audio = audio[:, :n] if n <= natural else np.pad(audio, ((0, 0), (0, n - natural)))
    return audio if logmel.ndim == 3 else audio[0]
