"""Audio loading: any sample rate in, mono float32 at the model's rate out, with clear errors.

Mono is required unless the caller asks to mix channels down (`mono="mix"`): silently mixing a
two-channel conversation would merge the user and the model.
"""

from __future__ import annotations

import io
import os
import tempfile

import numpy as np


class AudioError(ValueError):
    """Audio that cannot be used: unreadable, empty, non-finite or with the wrong channels."""


def _resample(audio: np.ndarray, sr: int, target_sr: int) -> np.ndarray:
    if sr == target_sr:
        return audio
    try:
        import soxr

        return soxr.resample(audio, sr, target_sr, quality="HQ").astype(np.float32)
    except ImportError:  # pragma: no cover - librosa brings soxr
        import librosa

        return librosa.resample(audio, orig_sr=sr, target_sr=target_sr).astype(np.float32)


def ensure_audio(audio: np.ndarray, sr: int, target_sr: int = 16000, *, mono: str = "require", name: str = "audio"):
    """Validates an in-memory clip ([n] or [n, channels]) and returns mono float32 at `target_sr`."""
    audio = np.asarray(audio)
    if audio.size == 0:
        raise AudioError(f"{name}: audio is empty")
    if sr <= 0:
        raise AudioError(f"{name}: sample rate must be positive, got {sr}")
    audio = audio.astype(np.float32)
    if not np.isfinite(audio).all():
        raise AudioError(f"{name}: audio contains NaN or inf")
    if audio.ndim == 2:
        if audio.shape[1] == 1:
            audio = audio[:, 0]
        elif mono == "mix":
            audio = audio.mean(axis=1)
        else:
            raise AudioError(
                f"{name}: expected mono audio, got {audio.shape[1]} channels; pass mono='mix' to average "
                "them, or load_stereo() to keep the channels apart"
            )
    elif audio.ndim != 1:
        raise AudioError(f"{name}: expected [samples] or [samples, channels], got shape {audio.shape}")
    return _resample(audio, int(sr), int(target_sr))


def _read(source) -> tuple[np.ndarray, int, str]:
    import soundfile as sf

    name = source if isinstance(source, (str, os.PathLike)) else "<bytes>"
    if isinstance(source, (str, os.PathLike)) and not os.path.exists(source):
        raise AudioError(f"{name}: file does not exist")
    try:
        data, sr = sf.read(io.BytesIO(source) if isinstance(source, bytes) else source, dtype="float32", always_2d=True)
    except Exception as e:  # soundfile raises LibsndfileError / RuntimeError / TypeError
        raise AudioError(f"{name}: cannot decode audio ({e})") from e
    if data.shape[0] == 0:
        raise AudioError(f"{name}: audio file has no samples")
    return data, int(sr), str(name)


def load_audio(source, target_sr: int = 16000, *, mono: str = "require") -> np.ndarray:
    """Reads a file path or bytes; returns mono float32 at `target_sr` (resampled as needed)."""
    data, sr, name = _read(source)
    return ensure_audio(data, sr, target_sr, mono=mono, name=name)


def load_stereo(source, target_sr: int = 16000) -> np.ndarray:
    """[channels, n] float32 at `target_sr`, channels kept apart (two-channel conversations)."""
    data, sr, name = _read(source)
    if not np.isfinite(data).all():
        raise AudioError(f"{name}: audio contains NaN or inf")
    return np.stack([_resample(data[:, c], sr, target_sr) for c in range(data.shape[1])])


def save_wav(path: str, audio: np.ndarray, sr: int) -> str:
    """Writes 16-bit PCM WAV atomically (temporary file, then rename)."""
    import soundfile as sf

    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=d, suffix=".wav.tmp")
    os.close(fd)
    try:
        sf.write(tmp, np.clip(np.asarray(audio, np.float32), -1, 1), sr, subtype="PCM_16", format="WAV")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path
