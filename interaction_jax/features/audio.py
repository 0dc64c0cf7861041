"""Audio loading: any sample rate in, mono float32 at the model's rate out, with clear errors.

Mono is required unless the caller asks to mix channels down (`mono="mix"`): silently mixing a
two-channel conversation would merge the user and the model. Two-channel corpora go through
`load_stereo`, which keeps the channels apart. Resampling is librosa.resample (soxr_hq).

Files that decode but are suspect are used as they are with one warning line on stderr naming
the file: a WAV whose header promises more audio than the file holds (cut short in a copy or a
download; the frames that are there are read), and float samples far above full scale
(peak > `LOUD_PEAK`, e.g. audio saved without normalising).
"""

from __future__ import annotations

import io
import os
import tempfile
from typing import Literal, Union

import numpy as np

from interaction_jax.errors import UserError

AudioSource = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview]
MonoMode = Literal["require", "mix"]
_MAX_CHANNELS = 16  # more "channels" than this almost surely means a [channels, samples] array
# Peak ceiling of generated speech (-0.9 dBFS): Griffin-Lim of an untrained model's mel can reach
# many times full scale, which 16-bit PCM would clip into square-wave noise.
PEAK_LEVEL = 0.9
FILE_MODE = 0o644  # written files are readable by other users (tempfile.mkstemp makes 0600)
LOUD_PEAK = 2.0  # float samples above this many times full scale get a warning


class AudioError(UserError, ValueError):
    """Audio that cannot be used: unreadable, empty, non-finite or with the wrong channels."""


def _resample(audio: np.ndarray, sr: int, target_sr: int) -> np.ndarray:
    if sr == target_sr:
        return audio.astype(np.float32, copy=False)
    import librosa

    return librosa.resample(audio, orig_sr=sr, target_sr=target_sr).astype(np.float32)


def _as_float(audio: np.ndarray) -> np.ndarray:
    """Integer PCM is scaled to [-1, 1) by its full scale; floats are taken as they are."""
    if np.issubdtype(audio.dtype, np.integer):
        info = np.iinfo(audio.dtype)
        if info.min < 0:
            return (audio.astype(np.float64) / -float(info.min)).astype(np.float32)
        mid = (info.max + 1) / 2  # unsigned PCM (e.g. 8-bit WAV) is offset binary
        return ((audio.astype(np.float64) - mid) / mid).astype(np.float32)
    if not np.issubdtype(audio.dtype, np.floating):
        raise AudioError(f"unsupported audio dtype {audio.dtype}")
    return audio.astype(np.float32)


def _check_rates(name: str, sr: int, target_sr: int) -> None:
    if sr <= 0 or target_sr <= 0:
        raise AudioError(f"{name}: sample rates must be positive, got sr={sr}, target_sr={target_sr}")


def ensure_audio(
    audio: np.ndarray,
    sr: int,
    target_sr: int = 16000,
    *,
    mono: MonoMode = "require",
    name: str = "audio",
) -> np.ndarray:
    """Validates an in-memory clip ([samples] or [samples, channels]); returns mono float32 at `target_sr`."""
    if mono not in ("require", "mix"):
        raise ValueError(f"mono must be 'require' or 'mix', got {mono!r}")
    _check_rates(name, sr, target_sr)
    audio = np.asarray(audio)
    if audio.size == 0:
        raise AudioError(f"{name}: audio is empty (shape {audio.shape})")
    audio = _as_float(audio)
    if not np.isfinite(audio).all():
        raise AudioError(f"{name}: audio contains NaN or inf")
    if audio.ndim == 2:
        channels = audio.shape[1]
        if channels > _MAX_CHANNELS:
            raise AudioError(
                f"{name}: shape {audio.shape} read as [samples, channels] has {channels} channels; "
                "pass [samples, channels] (transpose a [channels, samples] array)"
            )
        if channels == 1:
            audio = audio[:, 0]
        elif mono == "mix":
            audio = audio.mean(axis=1)
        else:
            raise AudioError(
                f"{name}: expected mono audio, got {channels} channels; pass mono='mix' to average "
                "them, or use load_stereo() to keep the channels apart"
            )
    elif audio.ndim != 1:
        raise AudioError(f"{name}: expected [samples] or [samples, channels], got shape {audio.shape}")
    return _resample(audio, int(sr), int(target_sr))


def _wav_data_shortfall(handle) -> tuple[int, int] | None:
    """(promised, present) bytes of a RIFF/WAVE file's `data` chunk when the file is shorter than its header says.

    Reads only the chunk headers (RIFF: "RIFF" size "WAVE", then id + little-endian u32 size chunks)."""
    import struct

    start = handle.tell()
    try:
        handle.seek(0, os.SEEK_END)
        end = handle.tell()
        handle.seek(0)
        head = handle.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None
        pos = 12
        while pos + 8 <= end:
            handle.seek(pos)
            cid, size = struct.unpack("<4sI", handle.read(8))
            if cid == b"data":
                present = end - pos - 8
                # 0 and 0xFFFFFFFF are streaming writers' "unknown length" placeholders
                return (size, present) if size not in (0, 0xFFFFFFFF) and size > present else None
            pos += 8 + size + (size & 1)
        return None
    finally:
        handle.seek(start)


def _warn_if_suspect(name: str, handle, data: np.ndarray) -> None:
    """One stderr line per problem for audio that decodes but is probably not what was meant."""
    import sys

    short = _wav_data_shortfall(handle)
    if short is not None:
        print(f"[audio] warning: {name}: the WAV header promises {short[0]} bytes of audio but the file holds "
              f"{short[1]} (truncated?); using the {data.shape[0]} frames that are there", file=sys.stderr, flush=True)
    peak = float(np.max(np.abs(data))) if data.size else 0.0
    if peak > LOUD_PEAK:
        print(f"[audio] warning: {name}: float samples reach {peak:.1f}x full scale (expected within [-1, 1]); "
              "the audio is used as it is (normalise it if that is not intended)", file=sys.stderr, flush=True)


def read_checked(path: str) -> tuple[np.ndarray, int]:
    """`soundfile.read(path)` as float32 [frames, channels], warning about a truncated or over-loud file."""
    import soundfile as sf

    data, sr = sf.read(path, dtype="float32", always_2d=True)
    with open(path, "rb") as f:
        _warn_if_suspect(path, f, data)
    return data, int(sr)


def _read(source: AudioSource) -> tuple[np.ndarray, int, str]:
    """[samples, channels] float32, sample rate, and a name for error messages."""
    import soundfile as sf

    if isinstance(source, (bytes, bytearray, memoryview)):
        name = f"<{len(source)} bytes>"
        if len(source) == 0:
            raise AudioError(f"{name}: no data (0 bytes)")
        handle = io.BytesIO(bytes(source))
    elif isinstance(source, (str, os.PathLike)):
        name = os.fspath(source)
        if not os.path.exists(name):
            raise AudioError(f"{name}: file does not exist")
        if os.path.isdir(name):
            raise AudioError(f"{name}: is a directory, not an audio file")
        if os.path.getsize(name) == 0:
            raise AudioError(f"{name}: file is empty (0 bytes)")
        handle = name
    else:
        raise TypeError(f"audio source must be a path or bytes, got {type(source).__name__}")
    try:
        data, sr = sf.read(handle, dtype="float32", always_2d=True)
    except Exception as e:  # soundfile raises LibsndfileError / RuntimeError / TypeError
        raise AudioError(f"{name}: cannot decode audio, corrupt or unsupported format ({e})") from e
    if data.shape[0] == 0:
        raise AudioError(f"{name}: audio file has no samples")
    if not np.isfinite(data).all():
        raise AudioError(f"{name}: audio contains NaN or inf")
    if isinstance(handle, str):
        with open(handle, "rb") as f:
            _warn_if_suspect(name, f, data)
    else:
        _warn_if_suspect(name, handle, data)
    return data, int(sr), name


def load_audio(source: AudioSource, target_sr: int = 16000, *, mono: MonoMode = "require") -> np.ndarray:
    """Reads a file path or encoded bytes; returns mono float32 [n] at `target_sr` (resampled as needed)."""
    if mono not in ("require", "mix"):
        raise ValueError(f"mono must be 'require' or 'mix', got {mono!r}")
    data, sr, name = _read(source)
    return ensure_audio(data, sr, target_sr, mono=mono, name=name)


def load_stereo(source: AudioSource, target_sr: int = 16000, *, channels: int | None = 2) -> np.ndarray:
    """[channels, n] float32 at `target_sr`, channels kept apart (two-channel conversation corpora).

    `channels` is the count the file must have (None accepts any), so a mono file fed to a
    two-speaker pipeline fails here rather than as a shape error later.
    """
    data, sr, name = _read(source)
    _check_rates(name, sr, target_sr)
    if channels is not None and data.shape[1] != channels:
        raise AudioError(f"{name}: expected {channels} channels, got {data.shape[1]}")
    return np.stack([_resample(data[:, c], sr, target_sr) for c in range(data.shape[1])])


def limit_peak(audio: np.ndarray, peak: float = PEAK_LEVEL) -> np.ndarray:
    """float32 `audio` scaled down (never up) so that max |x| <= `peak`; quieter audio is returned as is.

    One gain for the whole clip (no per-sample clipping, so the waveform's shape is kept).
    """
    if not 0.0 < peak <= 1.0:
        raise ValueError(f"limit_peak: peak must be in (0, 1], got {peak}")
    audio = np.asarray(audio, np.float32)
    top = float(np.max(np.abs(audio))) if audio.size else 0.0
    if not np.isfinite(top):
        raise AudioError("limit_peak: audio contains NaN or inf")
    return audio * np.float32(peak / top) if top > peak else audio


def on_input_clock(speech: np.ndarray, start_s: float, sr: int, num_samples: int) -> np.ndarray:
    """Model speech placed on the input's clock: silence until `start_s`, then `speech`, exactly `num_samples` long.

    The model's output starts one micro-turn in and covers whole micro-turns, so without the cut
    it would run past the end of the input (FDB and the timelines want the input's length).
    """
    out = np.zeros(max(0, int(num_samples)), np.float32)
    lead = int(round(start_s * sr))
    n = max(0, min(len(speech), out.size - lead))
    if n:
        out[lead:lead + n] = np.asarray(speech, np.float32)[:n]
    return out


def save_wav(path: str | os.PathLike[str], audio: np.ndarray, sr: int) -> str:
    """Writes 16-bit PCM WAV atomically (temp file in the same folder, then os.replace).

    `audio` is [n] mono or [channels, n] (as `load_stereo` returns); values are clipped to [-1, 1].
    The file is mode 0644 (readable by another user, e.g. one running Full-Duplex-Bench).
    """
    import soundfile as sf

    path = os.fspath(path)
    audio = np.asarray(audio, np.float32)
    if audio.ndim == 2:
        audio = audio.T  # soundfile wants [n, channels]
    elif audio.ndim != 1:
        raise AudioError(f"{path}: save_wav expects [n] or [channels, n], got shape {audio.shape}")
    if not np.isfinite(audio).all():
        raise AudioError(f"{path}: refusing to write audio containing NaN or inf")
    if sr <= 0:
        raise AudioError(f"{path}: sample rate must be positive, got {sr}")
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".", suffix=".wav.tmp")
    os.close(fd)
    try:
        sf.write(tmp, np.clip(audio, -1.0, 1.0), int(sr), subtype="PCM_16", format="WAV")
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path
