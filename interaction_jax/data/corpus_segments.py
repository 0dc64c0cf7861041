"""Mono two-party recordings for the corpus reader: RTTM speaker turns, STM utterances, CTM words -> roles.

Call-centre and meeting corpora come as one recording of both parties plus speaker segments
(RTTM) and a timed transcript (STM per utterance, CTM per word). A manifest line names them:

    {"id": "call1", "audio": "call1.wav",                  # mono: both parties in one channel
     "rttm": "call1.rttm",                                 # SPEAKER <file> <chan> <onset> <dur> <NA> <NA> <name> ...
     "speakers": {"user": "A", "model": "B"},              # RTTM names -> roles (default: names user/model)
     "stm": "call1.stm", "ctm": "call1.ctm",               # or "words"/"words_file" as for stereo (they win)
     "recording": "call1",                                 # optional: which <file> of the RTTM/STM/CTM to take
     "overlap": "user"}                                    # optional: "user" (default) or "both"

Every other RTTM speaker is an `other` voice. Lines are taken for one recording (`recording`;
default: the only file id in the file, else the line's `id`). Words, when there is no `words`
list: CTM words, each given the speaker of the STM utterance it lies in (its midpoint), else of
the RTTM turn it overlaps most (a word in no turn is dropped); with STM alone, an utterance's
words share its span in proportion to their characters (an estimate). STM's
`ignore_time_segment_in_scoring` and `;;` comments are skipped.

Channels (`split_channels`): the model channel is the recording inside the model speaker's
turns; the user channel is the recording everywhere else (the user, other voices, background,
silence), so the model's voice never leaks into what the model hears while it alone speaks.
Overlap (the model's turn and another speaker's at once) cannot be separated in one channel:
with `overlap="user"` such a stretch goes to the user channel only (the model channel is silent
there; its words stay), with `"both"` it is also kept in the model channel (which then holds
the other voice too). Either way the user channel still holds the model's voice there.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

Turn = tuple[str, float, float]  # (role, start, end)
RoleWord = tuple[str, str, float, float]  # (role, text, start, end)
OVERLAP_MODES = ("user", "both")
STM_IGNORE = "ignore_time_segment_in_scoring"


class SegmentsError(Exception):
    """A problem with one RTTM/STM/CTM file (the corpus reader names the manifest line and field)."""

    def __init__(self, field: str, msg: str):
        super().__init__(msg)
        self.field = field


def _lines(path: str, field: str) -> list[tuple[int, list[str]]]:
    try:
        with open(path, encoding="utf-8") as f:
            return [(k, line.split()) for k, line in enumerate(f, 1) if line.strip() and not line.startswith(";;")]
    except (OSError, UnicodeDecodeError) as e:
        raise SegmentsError(field, f"cannot read {path}: {e}") from e


def _num(tok: str, path: str, k: int, field: str, what: str) -> float:
    try:
        x = float(tok)
    except ValueError:
        x = float("nan")
    if not np.isfinite(x) or x < 0:
        raise SegmentsError(field, f"{path} line {k}: {what} must be a non-negative number, got {tok!r}")
    return x


def _pick(rows: list[tuple[int, list[str]]], recording: str | None, default: str, path: str,
          field: str) -> list[tuple[int, list[str]]]:
    """The rows of one recording (the file id is each row's first token)."""
    ids = sorted({r[0] for _, r in rows})
    want = recording if recording is not None else (ids[0] if len(ids) == 1 else default)
    picked = [(k, r) for k, r in rows if r[0] == want]
    if rows and not picked:
        raise SegmentsError(field, f"{path} has no lines for recording {want!r} (file ids: {', '.join(ids[:5])}"
                                   f"{' ...' if len(ids) > 5 else ''}); set 'recording'")
    return picked


def read_rttm(path: str, recording: str | None, default: str) -> list[tuple[str, float, float]]:
    """[(speaker name, start, end)] of the SPEAKER lines of one recording, by start time."""
    rows = []
    for k, r in _lines(path, "rttm"):
        if r[0] != "SPEAKER":
            continue
        if len(r) < 8:
            raise SegmentsError("rttm", f"{path} line {k}: a SPEAKER line has at least 8 fields "
                                        f"(SPEAKER file chan onset dur <NA> <NA> name), got {len(r)}")
        rows.append((k, r[1:]))
    out = []
    for k, r in _pick(rows, recording, default, path, "rttm"):
        onset, dur = _num(r[2], path, k, "rttm", "onset"), _num(r[3], path, k, "rttm", "duration")
        out.append((r[6], onset, onset + dur))
    if not out:
        raise SegmentsError("rttm", f"{path} has no SPEAKER lines")
    return sorted(out, key=lambda t: (t[1], t[2]))


def _rows(path: str, field: str, form: str) -> list[tuple[int, list[str]]]:
    """(line number, fields) of an STM/CTM file, whose lines have at least 5 fields."""
    rows = _lines(path, field)
    for k, r in rows:
        if len(r) < 5:
            article = "an" if field == "stm" else "a"
            raise SegmentsError(field, f"{path} line {k}: {article} {field.upper()} line is {form}, "
                                       f"got {len(r)} fields")
    return rows


def read_stm(path: str, recording: str | None, default: str) -> list[tuple[str, float, float, list[str]]]:
    """[(speaker name, start, end, words)] of one recording's utterances (ignored segments skipped)."""
    out = []
    for k, r in _pick(_rows(path, "stm", "'file chan speaker start end text'"), recording, default, path, "stm"):
        start, end = _num(r[3], path, k, "stm", "start"), _num(r[4], path, k, "stm", "end")
        if end < start:
            raise SegmentsError("stm", f"{path} line {k}: end {end} < start {start}")
        words = r[5:]
        if words and words[0].startswith("<") and words[0].endswith(">"):
            words = words[1:]  # the optional <label>
        if words != [STM_IGNORE]:
            out.append((r[2], start, end, words))
    return sorted(out, key=lambda u: (u[1], u[2]))


def read_ctm(path: str, recording: str | None, default: str) -> list[tuple[str, float, float]]:
    """[(word, start, end)] of one recording, by start time."""
    out = []
    for k, r in _pick(_rows(path, "ctm", "'file chan start dur word'"), recording, default, path, "ctm"):
        start = _num(r[2], path, k, "ctm", "start")
        out.append((r[4].replace("_", " "), start, start + _num(r[3], path, k, "ctm", "duration")))
    return sorted(out, key=lambda w: (w[1], w[2]))


def roles(turns: Sequence[tuple[str, float, float]], speakers: dict | None, path: str) -> tuple[list[Turn], dict]:
    """RTTM turns with names mapped to roles, and the mapping {name: role} (all other names: 'other')."""
    names = sorted({n for n, _, _ in turns})
    if speakers is None:
        if not {"user", "model"} <= set(names):
            raise SegmentsError("speakers", f"missing: which RTTM speakers are the user and the model? {path} has "
                                            f"{', '.join(names)}; give {{'user': NAME, 'model': NAME}}")
        speakers = {"user": "user", "model": "model"}
    if not isinstance(speakers, dict) or set(speakers) != {"user", "model"}:
        raise SegmentsError("speakers", f"must be {{'user': NAME, 'model': NAME}}, got {speakers!r}")
    if speakers["user"] == speakers["model"]:
        raise SegmentsError("speakers", f"user and model are the same speaker {speakers['user']!r}")
    for role in ("user", "model"):
        if speakers[role] not in names:
            raise SegmentsError(f"speakers.{role}", f"speaker {speakers[role]!r} has no turn in {path} "
                                                    f"(speakers: {', '.join(names)})")
    mapping = {n: "other" for n in names} | {speakers["user"]: "user", speakers["model"]: "model"}
    return [(mapping[n], a, b) for n, a, b in turns], mapping


def _spread(text: list[str], start: float, end: float) -> list[tuple[str, float, float]]:
    """An utterance's words sharing its span by characters (+1 for the space)."""
    w = np.array([len(t) + 1.0 for t in text])
    edges = start + (end - start) * np.concatenate([[0.0], np.cumsum(w) / w.sum()])
    return [(t, float(a), float(b)) for t, a, b in zip(text, edges[:-1], edges[1:], strict=True)]


def role_words(turns: Sequence[Turn], mapping: dict, stm=None, ctm=None) -> list[RoleWord]:
    """Speaker-labelled words from CTM (+ STM speakers) or STM alone (module docstring)."""
    utts = [(mapping.get(n, "other"), a, b, ws) for n, a, b, ws in stm or []]
    if ctm is None:
        return [(role, t, a, b) for role, s, e, ws in utts for t, a, b in _spread(ws, s, e)]
    out = []
    for text, a, b in ctm:
        mid = (a + b) / 2
        role = next((r for r, s, e, _ in utts if s <= mid <= e), None)
        if role is None:  # the turn it overlaps most (or that holds its midpoint)
            scored = [(min(e, b) - max(s, a), r) for r, s, e in turns if s <= mid <= e or min(e, b) > max(s, a)]
            role = max(scored)[1] if scored else None
        if role is not None:
            out.append((role, text, a, b))
    return out


def _mask(turns: Sequence[Turn], which, n: int, sr: int) -> np.ndarray:
    m = np.zeros(n, bool)
    for role, a, b in turns:
        if which(role):
            m[int(round(a * sr)): int(round(b * sr))] = True
    return m


def split_channels(mix: np.ndarray, turns: Sequence[Turn], sr: int, overlap: str = "user") -> tuple[np.ndarray,
                                                                                                   np.ndarray]:
    """(user, model) channels of a mono mix from role turns (module docstring)."""
    if overlap not in OVERLAP_MODES:
        raise ValueError(f"corpus: overlap must be one of {OVERLAP_MODES}, got {overlap!r}")
    n = mix.size
    model = _mask(turns, lambda r: r == "model", n, sr)
    others = _mask(turns, lambda r: r != "model", n, sr)
    model_only = model & ~others
    keep_model = model if overlap == "both" else model_only
    return np.where(model_only, 0.0, mix).astype(np.float32), np.where(keep_model, mix, 0.0).astype(np.float32)


def resolve(base: str, path, field: str) -> str:
    if not isinstance(path, str) or not path:
        raise SegmentsError(field, f"must be a file path string, got {path!r}")
    p = path if os.path.isabs(path) else os.path.join(base, path)
    if not os.path.isfile(p):
        raise SegmentsError(field, f"missing file {p}")
    return p


__all__ = ["OVERLAP_MODES", "SegmentsError", "read_ctm", "read_rttm", "read_stm", "role_words", "roles",
           "split_channels"]
