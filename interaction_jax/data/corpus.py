"""Real two-channel conversation corpora (Fisher/Switchboard-style) -> Episodes.

A corpus manifest is JSON lines, one conversation per line:

    {"id": "fe_03_00001",
     "audio": "a.wav", "model_channel": 1,                 # one stereo file, or
     "audio": {"user": "u.wav", "model": "m.wav"},          # one mono file per speaker, or
     "audio": "mix.wav", "rttm": "mix.rttm",                # one mono recording of both + speaker turns
     "speakers": {"user": "A", "model": "B"},               #   (+ "stm" / "ctm"; data/corpus_segments.py)
     "words": [{"speaker": "user"|"model"|"other", "text": "hi", "start": 0.1, "end": 0.3}, ...],
     "words_file": "w.json",                                # instead of "words" (a list, or {"words": [...]})
     "video": [{"time": 0.0, "path": "f0.png"}, ...],       # optional
     "duration": 600.0}                                     # optional; defaults to the audio length

Relative paths resolve against the manifest's folder. One speaker of the conversation plays
the model (its channel is the ground-truth model speech); the other is the user. The same file
for both roles is refused (its model speech would leak into the user channel). `read_manifest`
checks every line up front (all problems reported at once, each naming line and field) so a
long preparation run never dies on conversation 9,000. Audio headers are read, not samples.
"""

from __future__ import annotations

import dataclasses
import json
import os
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
from interaction_jax.errors import UserError

SPEAKERS = ("user", "model", "other")
TIME_TOLERANCE = 0.05  # seconds a word may overhang the audio (alignment rounding)
_MAX_REPORTED = 30


@dataclasses.dataclass(frozen=True)
class SpeakerWord:
    speaker: str
    text: str
    start: float
    end: float


@dataclasses.dataclass(frozen=True)
class ConversationSpec:
    """One validated manifest line, paths absolute. Exactly one of `audio` / (`user_audio`, `model_audio`).

    With `turns`, `audio` is a mono recording of both parties split by the role turns.
    """

    id: str
    duration: float
    words: tuple[SpeakerWord, ...]
    audio: str | None = None
    model_channel: int | None = None
    user_audio: str | None = None
    model_audio: str | None = None
    video: tuple[tuple[float, str], ...] = ()
    source: str = ""  # "manifest:line"
    turns: tuple[tuple[str, float, float], ...] = ()  # mono mix: (role, start, end) speaker turns
    overlap: str = "user"  # mono mix: where overlapped stretches go (corpus_segments.split_channels)


class CorpusError(UserError, ValueError):
    """A corpus manifest that cannot be used (every bad line and field is listed)."""


class _LineError(Exception):
    """One problem with a manifest line; collected and reported together."""

    def __init__(self, field: str, msg: str):
        super().__init__(f"field '{field}': {msg}")


def _is_num(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and np.isfinite(x)


def _resolve(base: str, path: Any, field: str) -> str:
    from interaction_jax.data import corpus_segments as cs

    try:
        return cs.resolve(base, path, field)
    except cs.SegmentsError as e:
        raise _LineError(e.field, str(e)) from e


def _audio_info(path: str, field: str) -> tuple[int, float]:
    import soundfile as sf

    try:
        info = sf.info(path)
    except Exception as e:  # noqa: BLE001 - soundfile raises several types for unreadable files
        raise _LineError(field, f"unreadable audio file {path}: {e}") from e
    return info.channels, info.frames / info.samplerate


def _parse_words(raw: Any, field: str) -> list[SpeakerWord]:
    if isinstance(raw, dict) and "words" in raw:
        raw = raw["words"]
    if not isinstance(raw, list):
        raise _LineError(field, f"must be a list of words, got {type(raw).__name__}")
    words = []
    for k, w in enumerate(raw):
        f = f"{field}[{k}]"
        if not isinstance(w, dict):
            raise _LineError(f, f"must be an object, got {w!r}")
        for key in ("speaker", "text", "start", "end"):
            if key not in w:
                raise _LineError(f"{f}.{key}", "missing")
        if w["speaker"] not in SPEAKERS:
            raise _LineError(f"{f}.speaker", f"unknown speaker {w['speaker']!r}; expected one of {SPEAKERS}")
        if not isinstance(w["text"], str):
            raise _LineError(f"{f}.text", f"must be a string, got {w['text']!r}")
        for key in ("start", "end"):
            if not _is_num(w[key]) or w[key] < 0:
                raise _LineError(f"{f}.{key}", f"must be a non-negative number, got {w[key]!r}")
        if w["start"] > w["end"]:
            raise _LineError(f"{f}.start", f"start {w['start']} > end {w['end']}")
        words.append(SpeakerWord(w["speaker"], w["text"], float(w["start"]), float(w["end"])))
    return words


def _parse_line(obj: Any, base: str, seen: set[str], source: str) -> ConversationSpec:
    if not isinstance(obj, dict):
        raise _LineError("<line>", f"must be a JSON object, got {type(obj).__name__}")
    cid = obj.get("id")
    if not isinstance(cid, str) or not cid:
        raise _LineError("id", "missing" if cid is None else f"must be a non-empty string, got {cid!r}")
    if cid in seen:
        raise _LineError("id", f"duplicate id {cid!r}")
    seen.add(cid)
    audio = obj.get("audio")
    kw: dict[str, Any] = {}
    if isinstance(audio, dict):
        if set(audio) != {"user", "model"}:
            raise _LineError("audio", f"per-speaker audio needs exactly 'user' and 'model', "
                                      f"got {sorted(audio)}")
        if "model_channel" in obj:
            raise _LineError("model_channel", "only applies to a stereo 'audio' file")
        lengths = []
        for who in ("user", "model"):
            p = _resolve(base, audio[who], f"audio.{who}")
            channels, secs = _audio_info(p, f"audio.{who}")
            if channels != 1:
                raise _LineError(f"audio.{who}", f"per-speaker file {p} must be mono, "
                                                 f"has {channels} channels")
            kw[f"{who}_audio"] = p
            lengths.append(secs)
        audio_secs = max(lengths)
        if os.path.samefile(kw["user_audio"], kw["model_audio"]):
            raise _LineError("audio", f"'user' and 'model' are the same file {kw['user_audio']}: a recording of "
                                      "both parties needs 'audio': FILE with 'rttm' speaker turns")
    elif audio is not None and "rttm" in obj:
        p = _resolve(base, audio, "audio")
        channels, audio_secs = _audio_info(p, "audio")
        if channels != 1:
            raise _LineError("audio", f"{p} has {channels} channels; 'rttm' turns split a mono recording "
                                      "(give a stereo file with 'model_channel' instead)")
        if "model_channel" in obj:
            raise _LineError("model_channel", "only applies to a stereo 'audio' file")
        kw.update(audio=p, **_mono_turns(obj, base, cid))
    elif audio is not None:
        p = _resolve(base, audio, "audio")
        channels, audio_secs = _audio_info(p, "audio")
        if channels == 1:
            raise _LineError("audio", f"{p} is mono: a recording of both parties needs 'rttm' speaker turns "
                                      "(+ 'speakers': {'user': NAME, 'model': NAME})")
        if channels != 2:
            raise _LineError("audio", f"{p} must be a stereo (2-channel) file, has {channels} channel(s)")
        ch = obj.get("model_channel")
        if ch is None:
            raise _LineError("model_channel", "missing (0 or 1: which stereo channel is the model)")
        if ch not in (0, 1) or isinstance(ch, bool):
            raise _LineError("model_channel", f"bad channel {ch!r}; must be 0 or 1")
        kw.update(audio=p, model_channel=int(ch))
    else:
        raise _LineError("audio", "missing (a stereo file path or {'user': ..., 'model': ...})")
    duration = obj.get("duration", audio_secs)
    if not _is_num(duration) or duration <= 0:
        raise _LineError("duration", f"must be a positive number, got {duration!r}")
    if duration > audio_secs + TIME_TOLERANCE:
        raise _LineError("duration", f"{duration} s is longer than the audio ({audio_secs:.3f} s)")
    if kw.get("turns") and "words" not in obj and "words_file" not in obj:
        words = kw.pop("words")
    elif ("words" in obj) == ("words_file" in obj):
        raise _LineError("words", "give exactly one of 'words' and 'words_file'"
                         + (" (or 'stm' / 'ctm')" if kw.get("turns") else ""))
    elif "words" in obj:
        words = _parse_words(obj["words"], "words")
    else:
        wpath = _resolve(base, obj["words_file"], "words_file")
        try:
            with open(wpath) as f:
                raw = json.load(f)
        except json.JSONDecodeError as e:
            raise _LineError("words_file", f"{wpath} is not valid JSON: {e}") from e
        words = _parse_words(raw, "words_file")
    kw.pop("words", None)
    for k, (role, _, end) in enumerate(kw.get("turns", ())):
        if end > duration + TIME_TOLERANCE:
            raise _LineError("rttm", f"turn {k} ({role}) ends at {end:.3f} s, outside the audio ({duration:.3f} s)")
    for k, w in enumerate(words):
        if w.end > duration + TIME_TOLERANCE:
            raise _LineError(f"words[{k}].end", f"word {w.text!r} ends at {w.end} s, outside the audio "
                                                f"({duration:.3f} s)")
    video = []
    for k, v in enumerate(obj.get("video") or []):
        if not isinstance(v, dict) or not _is_num(v.get("time")) or not 0 <= v["time"] <= duration:
            raise _LineError(f"video[{k}].time", f"must be a number in [0, duration], got {v!r}")
        video.append((float(v["time"]), _resolve(base, v.get("path"), f"video[{k}].path")))
    words.sort(key=lambda w: w.start)
    return ConversationSpec(id=cid, duration=float(duration), words=tuple(words), video=tuple(sorted(video)),
                            source=source, **kw)


def _mono_turns(obj: dict, base: str, cid: str) -> dict:
    """turns / overlap / words of a mono recording with RTTM (+ STM / CTM) files (data/corpus_segments.py)."""
    from interaction_jax.data import corpus_segments as cs

    rec = obj.get("recording")
    if rec is not None and not isinstance(rec, str):
        raise _LineError("recording", f"must be a string (a file id of the RTTM/STM/CTM), got {rec!r}")
    overlap = obj.get("overlap", "user")
    if overlap not in cs.OVERLAP_MODES:
        raise _LineError("overlap", f"must be one of {cs.OVERLAP_MODES}, got {overlap!r}")
    try:
        raw = cs.read_rttm(cs.resolve(base, obj["rttm"], "rttm"), rec, cid)
        turns, mapping = cs.roles(raw, obj.get("speakers"), obj["rttm"])
        listed = "words" in obj or "words_file" in obj  # speaker-labelled words win over STM / CTM
        stm = cs.read_stm(cs.resolve(base, obj["stm"], "stm"), rec, cid) if "stm" in obj and not listed else None
        ctm = cs.read_ctm(cs.resolve(base, obj["ctm"], "ctm"), rec, cid) if "ctm" in obj and not listed else None
    except cs.SegmentsError as e:
        raise _LineError(e.field, str(e)) from e
    if not listed and stm is None and ctm is None:
        raise _LineError("words", "missing: a mono recording needs 'stm', 'ctm', 'words' or 'words_file'")
    words = [SpeakerWord(*w) for w in cs.role_words(turns, mapping, stm, ctm)] if not listed else []
    return {"turns": tuple(turns), "overlap": overlap, "words": words}


def read_manifest(path: str) -> list[ConversationSpec]:
    """Parses and validates a manifest; raises one CorpusError (a ValueError) listing every bad line and field."""
    base = os.path.dirname(os.path.abspath(path))
    specs, errors, seen = [], [], set()
    if not os.path.isfile(path):
        raise CorpusError(f"corpus manifest {path} does not exist (expected a JSON-lines file)")
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            source = f"{path}:{lineno}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                errors.append(f"{path} line {lineno}: not valid JSON: {e}")
                continue
            try:
                specs.append(_parse_line(obj, base, seen, source))
            except _LineError as e:
                errors.append(f"{path} line {lineno}: {e}")
    if errors:
        more = f"\n... and {len(errors) - _MAX_REPORTED} more" if len(errors) > _MAX_REPORTED else ""
        raise CorpusError(f"{len(errors)} problem(s) in corpus manifest:\n" + "\n".join(errors[:_MAX_REPORTED])
                         + more)
    return specs


def _read_audio(path: str, sample_rate: int) -> np.ndarray:
    """(frames, channels) float32 at `sample_rate`."""
    from interaction_jax.features.audio import read_checked

    data, sr = read_checked(path)
    if sr != sample_rate:
        # soxr "HQ" is exactly what librosa.resample uses by default, without librosa's
        # multi-second import (numba); fall back to librosa where soxr is absent.
        try:
            import soxr

            data = soxr.resample(data, sr, sample_rate, quality="HQ")
        except ImportError:
            import librosa

            data = librosa.resample(data.T, orig_sr=sr, target_sr=sample_rate).T
    return np.ascontiguousarray(data, np.float32)


def _read_frame(path: str) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), np.uint8)


def load_conversation(spec: ConversationSpec, sample_rate: int = 16000) -> Episode:
    """Reads (and resamples) the audio of `spec` into an Episode with task "conversation"."""
    if spec.turns:
        from interaction_jax.data.corpus_segments import split_channels

        user, model = split_channels(_read_audio(spec.audio, sample_rate)[:, 0], spec.turns, sample_rate,
                                     spec.overlap)
    elif spec.audio is not None:
        data = _read_audio(spec.audio, sample_rate)
        model, user = data[:, spec.model_channel], data[:, 1 - spec.model_channel]
    else:
        user = _read_audio(spec.user_audio, sample_rate)[:, 0]
        model = _read_audio(spec.model_audio, sample_rate)[:, 0]
    by = {s: [Word(w.text, w.start, w.end) for w in spec.words if w.speaker == s] for s in SPEAKERS}
    return Episode(  # Episode pads/trims both channels to `duration`
        episode_id=spec.id,
        duration=spec.duration,
        sample_rate=sample_rate,
        user_audio=user,
        model_audio=model,
        user_words=by["user"],
        model_words=by["model"],
        other_words=by["other"],
        video=[VideoFrame(t, _read_frame(p)) for t, p in spec.video],
        task="conversation",
        metadata={"source": spec.source, "conversation_id": spec.id,
                  **({"model_channel": spec.model_channel} if spec.model_channel is not None else {}),
                  **({"mono_mix": True, "overlap": spec.overlap} if spec.turns else {})},
    )


def _gaps(episode: Episode) -> list[tuple[float, float]]:
    """Intervals of [0, duration] where no word (of any speaker) is being spoken."""
    spans = sorted((w.start, w.end) for w in episode.user_words + episode.model_words + episode.other_words)
    gaps, t = [], 0.0
    for a, b in spans:
        if a > t:
            gaps.append((t, a))
        t = max(t, b)
    if t < episode.duration:
        gaps.append((t, episode.duration))
    return gaps


def _cut_points(episode: Episode, max_seconds: float) -> list[float]:
    """Greedy cuts: in the latest silent gap that keeps each piece <= max_seconds (mid-gap when it fits)."""
    gaps, cuts, s = _gaps(episode), [], 0.0
    while episode.duration - s > max_seconds:
        limit, best = s + max_seconds, None
        for a, b in gaps:
            if a < limit:
                t = min((a + b) / 2, limit, b)
                if t > s + 1e-3:
                    best = t
        cuts.append(best if best is not None else limit)  # no silence: hard cut, straddling words dropped
        s = cuts[-1]
    return cuts


def _piece(ep: Episode, k: int, s: float, e: float) -> Episode:
    sr = ep.sample_rate
    i0, i1 = int(round(s * sr)), int(round(e * sr))
    s, dur = i0 / sr, (i1 - i0) / sr

    def words(ws: list[Word]) -> list[Word]:
        return [Word(w.text, w.start - s, w.end - s) for w in ws if w.start >= s - 1e-9 and w.end <= e + 1e-9]

    shown = [f for f in ep.video if f.time <= s]  # the frame on screen at the cut carries over at t=0
    video = ([VideoFrame(0.0, shown[-1].image)] if shown and shown[-1].time < s else [])
    video += [VideoFrame(f.time - s, f.image) for f in ep.video if s <= f.time < e]
    return Episode(
        episode_id=f"{ep.episode_id}_part{k:03d}",
        duration=dur,
        sample_rate=sr,
        user_audio=ep.user_audio[i0:i1],
        model_audio=ep.model_audio[i0:i1],
        other_audio=ep.other_audio[i0:i1],
        user_words=words(ep.user_words),
        model_words=words(ep.model_words),
        other_words=words(ep.other_words),
        user_text=[TextEvent(t.text, t.time - s) for t in ep.user_text if s <= t.time < e],
        video=video,
        background=[BackgroundEvent(b.kind, b.time - s, b.text, b.job_id) for b in ep.background
                    if s <= b.time < e],
        grading=[GradingWindow(g.kind, max(g.start, s) - s, min(g.end, e) - s, g.expected)
                 for g in ep.grading if g.start < e and g.end > s],
        task=ep.task,
        metadata={**ep.metadata, "split": {"part": k, "offset": s, "source_duration": ep.duration,
                                           "source_id": ep.episode_id}},
    )


def split_long(episode: Episode, max_seconds: float) -> list[Episode]:
    """Cuts `episode` into pieces of at most `max_seconds`, at silences between words.

    Times are re-based to each piece. Only when speech runs unbroken for longer than
    `max_seconds` is a piece cut mid-word; words crossing such a cut are dropped.
    """
    if max_seconds <= 0:
        raise ValueError(f"max_seconds must be > 0, got {max_seconds}")
    if episode.duration <= max_seconds:
        return [episode]
    bounds = [0.0, *_cut_points(episode, max_seconds), episode.duration]
    return [_piece(episode, k, a, b) for k, (a, b) in enumerate(zip(bounds[:-1], bounds[1:]))]
