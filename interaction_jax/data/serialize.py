"""Episode <-> bytes: the compact, versioned record format stored in episode stores.

A record is an uncompressed `np.savez` container (a zip of .npy entries, loaded with
`allow_pickle=False`, so a record can never execute code):

    header          uint8 JSON: format name, version, scalar fields, every event list
    user_audio      int16 PCM, model_audio likewise
    other_audio     int16 PCM, only when the episode keeps its third voices alone (`Episode.other_audio`);
                    records without it (older ones included) decode with an empty track
    video_frames    uint8 (N, H, W, 3) stack when every frame has the same shape, else
                    video_frame_<i> entries (frame times live in the header)
    extra.<name>    optional precomputed features (e.g. "user_logmel" float16), dtype kept

Audio quantisation: samples are clipped to [-1, 1] and stored as round(x * 32767) int16,
decoded as q / 32767. Error for in-range input is at most 0.5 / 32767 (~1.5e-5, ~-96 dBFS),
well below anything the log-mel front end resolves; out-of-range samples are clipped.
Int16 halves the record size versus float32 and is what speech corpora ship anyway.

No compression: audio barely compresses and random access wants cheap decoding.
"""

from __future__ import annotations

import dataclasses
import io
import json
import zipfile
from typing import Any

import numpy as np

from interaction_jax.data.episode import (
    BackgroundEvent,
    Episode,
    GradingWindow,
    TextEvent,
    VideoFrame,
    Word,
)

FORMAT = "interaction_jax.episode"
VERSION = 1
PCM_SCALE = 32767.0
_EXTRA = "extra."
_EVENT_LISTS: dict[str, type] = {
    "user_words": Word,
    "model_words": Word,
    "other_words": Word,
    "user_text": TextEvent,
    "background": BackgroundEvent,
    "grading": GradingWindow,
}


def _json_default(obj: Any) -> Any:
    """Lets numpy scalars/arrays in metadata serialise as plain JSON."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"metadata value of type {type(obj).__name__} is not JSON-serialisable")


def quantize_pcm(audio: np.ndarray) -> np.ndarray:
    """float [-1, 1] -> int16 (clipped, rounded)."""
    return np.round(np.clip(np.asarray(audio, np.float32), -1.0, 1.0) * PCM_SCALE).astype(np.int16)


def dequantize_pcm(pcm: np.ndarray) -> np.ndarray:
    return (np.asarray(pcm, np.int16).astype(np.float32) / PCM_SCALE).astype(np.float32)


def episode_to_bytes(ep: Episode, extras: dict[str, np.ndarray] | None = None) -> bytes:
    """Serialises `ep` (and optional feature arrays `extras`) into one record."""
    header = {
        "format": FORMAT,
        "version": VERSION,
        "episode_id": ep.episode_id,
        "duration": float(ep.duration),
        "sample_rate": int(ep.sample_rate),
        "task": ep.task,
        "metadata": ep.metadata,
        "num_samples": [int(ep.user_audio.size), int(ep.model_audio.size)],
        "video_times": [float(f.time) for f in ep.video],
        "extras": sorted(extras or {}),
    }
    if ep.other_audio.size:
        header["other_samples"] = int(ep.other_audio.size)
    for name in _EVENT_LISTS:
        header[name] = [dataclasses.asdict(e) for e in getattr(ep, name)]
    try:
        header_bytes = json.dumps(header, default=_json_default, allow_nan=True).encode()
    except (TypeError, ValueError) as e:
        raise ValueError(f"episode {ep.episode_id!r}: cannot serialise header: {e}") from e
    arrays: dict[str, np.ndarray] = {
        "header": np.frombuffer(header_bytes, np.uint8),
        "user_audio": quantize_pcm(ep.user_audio),
        "model_audio": quantize_pcm(ep.model_audio),
    }
    if ep.other_audio.size:
        arrays["other_audio"] = quantize_pcm(ep.other_audio)
    frames = [np.asarray(f.image) for f in ep.video]
    for i, fr in enumerate(frames):
        if fr.dtype != np.uint8 or fr.ndim != 3:
            raise ValueError(f"episode {ep.episode_id!r}: video frame {i} must be uint8 (H, W, C), got "
                             f"{fr.dtype} {fr.shape}")
    if frames and len({f.shape for f in frames}) == 1:
        arrays["video_frames"] = np.stack(frames)
    else:
        arrays.update({f"video_frame_{i}": fr for i, fr in enumerate(frames)})
    for name, value in (extras or {}).items():
        arr = np.asarray(value)
        if arr.dtype == object:
            raise ValueError(f"extra {name!r} has dtype object; only plain numeric arrays are stored")
        arrays[_EXTRA + name] = arr
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _decode(data: bytes) -> tuple[Episode, dict[str, np.ndarray]]:
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        header = json.loads(bytes(z["header"]).decode())
        if not isinstance(header, dict) or header.get("format") != FORMAT:
            found = header.get("format") if isinstance(header, dict) else None
            raise ValueError(f"not an {FORMAT} record (format={found!r})")
        if header.get("version") != VERSION:
            raise ValueError(f"unsupported episode record version {header.get('version')!r}; "
                             f"this code reads version {VERSION}")
        user, model = z["user_audio"], z["model_audio"]
        if [user.size, model.size] != header["num_samples"]:
            raise ValueError(f"audio length {[user.size, model.size]} != header {header['num_samples']}")
        other = z["other_audio"] if "other_audio" in z.files else np.zeros(0, np.int16)
        if other.size != header.get("other_samples", 0):
            raise ValueError(f"other_audio length {other.size} != header {header.get('other_samples', 0)}")
        times = header["video_times"]
        if times and "video_frames" in z.files:
            images = list(z["video_frames"])
        else:
            images = [z[f"video_frame_{i}"] for i in range(len(times))]
        if len(images) != len(times):
            raise ValueError(f"{len(images)} video frames but {len(times)} frame times")
        extras = {name: z[_EXTRA + name] for name in header["extras"]}
    events = {name: [cls(**e) for e in header[name]] for name, cls in _EVENT_LISTS.items()}
    ep = Episode(
        episode_id=header["episode_id"],
        duration=header["duration"],
        sample_rate=header["sample_rate"],
        user_audio=dequantize_pcm(user),
        model_audio=dequantize_pcm(model),
        other_audio=dequantize_pcm(other),
        video=[VideoFrame(time=t, image=im) for t, im in zip(times, images)],
        task=header["task"],
        metadata=header["metadata"],
        **events,
    )
    return ep, extras


def episode_and_extras_from_bytes(data: bytes) -> tuple[Episode, dict[str, np.ndarray]]:
    """Decodes a record into (Episode, extras). Any malformed payload raises ValueError."""
    try:
        return _decode(bytes(data))
    except ValueError as e:
        if str(e).startswith(("not an", "unsupported episode record version")):
            raise
        raise ValueError(f"corrupt episode record: {e}") from e
    except (zipfile.BadZipFile, KeyError, TypeError, OSError, EOFError, UnicodeDecodeError) as e:
        raise ValueError(f"corrupt episode record ({type(e).__name__}: {e})") from e


def episode_from_bytes(data: bytes) -> Episode:
    """Decodes a record into an Episode (extras, if any, are dropped)."""
    return episode_and_extras_from_bytes(data)[0]


def record_header(data: bytes) -> dict[str, Any]:
    """Only the JSON header of a record (cheap: the audio entries are not read)."""
    try:
        with np.load(io.BytesIO(bytes(data)), allow_pickle=False) as z:
            return json.loads(bytes(z["header"]).decode())
    except (ValueError, zipfile.BadZipFile, KeyError, OSError, EOFError, UnicodeDecodeError) as e:
        raise ValueError(f"corrupt episode record ({type(e).__name__}: {e})") from e
