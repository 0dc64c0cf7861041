"""Log-mel and dMel exactly as Bai et al. 2024 ("dMel: Speech Tokenization made Simple").

16 kHz audio, 1024-point FFT, 800-sample (50 ms) Hann window, 200-sample (12.5 ms) hop, so
80 frames/s; centred frames (reflect padding); the *magnitude* spectrum (power 1); 80 mel
bands from 80 to 7600 Hz (librosa's Slaney-normalised filterbank, htk=False); floor 1e-10;
log10. dMel quantises every channel independently to 16 bins with centres -7 + 0.6k
(k = 0..15) after clamping to [-7, 2]: 4 bits per channel, no learned codebook.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np


@dataclasses.dataclass(frozen=True)
class FeatureParams:
    """Signal-processing constants (defaults = the dMel paper); see `config.features`."""

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

    @classmethod
    def from_config(cls, fc) -> FeatureParams:
        if fc is None:
            return cls()
        return cls(**{f.name: type(getattr(cls, f.name))(fc[f.name]) for f in dataclasses.fields(cls) if f.name in fc})

    @property
    def bin_width(self) -> float:
        return (self.dmel_max - self.dmel_min) / (self.dmel_bins - 1)

    @property
    def bin_centres(self) -> np.ndarray:
        return (self.dmel_min + self.bin_width * np.arange(self.dmel_bins)).astype(np.float32)

    @property
    def frame_rate(self) -> float:
        return self.sample_rate / self.hop_length


@functools.lru_cache(maxsize=8)
def mel_filterbank(params: FeatureParams = FeatureParams()) -> np.ndarray:
    """[n_mels, 1 + n_fft // 2] Slaney mel filterbank."""
    import librosa

    return librosa.filters.mel(
        sr=params.sample_rate, n_fft=params.n_fft, n_mels=params.n_mels, fmin=params.fmin, fmax=params.fmax
    ).astype(np.float32)


def log_mel(audio: np.ndarray, params: FeatureParams = FeatureParams()) -> np.ndarray:
    """log10 magnitude mel spectrogram, [1 + len(audio) // hop, n_mels] float32."""
    import librosa

    audio = np.asarray(audio, np.float32)
    if audio.ndim != 1:
        raise ValueError(f"log_mel expects mono 1-D audio, got shape {audio.shape}")
    if audio.size == 0:
        return np.zeros((0, params.n_mels), np.float32)
    if not np.isfinite(audio).all():
        raise ValueError("log_mel: audio contains NaN or inf")
    # reflect padding needs more samples than half a frame; very short clips pad with zeros
    pad_mode = "reflect" if audio.size > params.n_fft // 2 else "constant"
    spec = np.abs(
        librosa.stft(
            audio,
            n_fft=params.n_fft,
            hop_length=params.hop_length,
            win_length=params.win_length,
            window="hann",
            center=True,
            pad_mode=pad_mode,
        )
    )
    mel = mel_filterbank(params) @ spec
    out = np.log10(np.maximum(mel, params.floor)).T.astype(np.float32)
    n_frames = 1 + len(audio) // params.hop_length
    return out[:n_frames]


def dmel_encode(logmel: np.ndarray, params: FeatureParams = FeatureParams()) -> np.ndarray:
    """Nearest-bin-centre codes (uint8 in [0, bins)) after clamping to [dmel_min, dmel_max]."""
    x = np.clip(np.asarray(logmel, np.float32), params.dmel_min, params.dmel_max)
    codes = np.rint((x - params.dmel_min) / params.bin_width)
    return np.clip(codes, 0, params.dmel_bins - 1).astype(np.uint8)


def dmel_decode(codes: np.ndarray, params: FeatureParams = FeatureParams()) -> np.ndarray:
    """Log-mel values at the bin centres."""
    codes = np.asarray(codes)
    if codes.size and (codes.min() < 0 or codes.max() >= params.dmel_bins):
        raise ValueError(f"dMel codes must lie in [0, {params.dmel_bins}), got [{codes.min()}, {codes.max()}]")
    return params.bin_centres[codes.astype(np.int64)]


def mel_to_audio(logmel: np.ndarray, params: FeatureParams = FeatureParams(), n_iter: int = 32) -> np.ndarray:
    """Waveform from a log10 magnitude mel spectrogram ([T, n_mels]) with Griffin-Lim."""
    import librosa

    logmel = np.asarray(logmel, np.float32)
    if logmel.ndim != 2 or logmel.shape[1] != params.n_mels:
        raise ValueError(f"mel_to_audio expects [frames, {params.n_mels}], got {logmel.shape}")
    mel = np.power(10.0, logmel).T
    audio = librosa.feature.inverse.mel_to_audio(
        mel,
        sr=params.sample_rate,
        n_fft=params.n_fft,
        hop_length=params.hop_length,
        win_length=params.win_length,
        window="hann",
        center=True,
        power=1.0,
        n_iter=n_iter,
        fmin=params.fmin,
        fmax=params.fmax,
        length=(logmel.shape[0] - 1) * params.hop_length if logmel.shape[0] > 1 else None,
    )
    return np.nan_to_num(audio.astype(np.float32))
