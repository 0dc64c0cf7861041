"""What goes to a background backend and what comes back.

When the interaction model emits `Control.DELEGATE` (optionally followed by request text and
`DELEGATE_END`), the runtime builds a `ContextPackage`: the *whole* conversation so far, not a
standalone query, because the published system's point is that the background model sees what
the user actually said and how the conversation got here. The package is versioned JSON so it
can cross a process or network boundary and be logged/replayed; readers refuse versions they
do not know instead of silently misreading fields.

Backends answer with a stream of text chunks; the runner turns them into `DelegationEvent`s
(chunk / done / error / cancelled), which `BackgroundQueue` turns into background-slot tokens.
"""

from __future__ import annotations

import dataclasses
import json
import time as _time
from collections.abc import Iterable, Mapping
from typing import Any

from interaction_jax.data.episode import BackgroundEvent, TextEvent, Word

CONTEXT_PACKAGE_VERSION = 1

# DelegationEvent kinds.
CHUNK = "chunk"
DONE = "done"
ERROR = "error"
CANCELLED = "cancelled"
EVENT_KINDS = (CHUNK, DONE, ERROR, CANCELLED)
TERMINAL_KINDS = (DONE, ERROR, CANCELLED)

# Delegation statuses inside a package.
DELEGATION_STATUSES = ("pending", "done", "error", "cancelled")


@dataclasses.dataclass(frozen=True)
class Delegation:
    """An earlier delegation of this session, so the backend knows what is already in flight or answered."""

    job_id: int
    request: str
    time: float  # session seconds when it was requested
    status: str = "pending"  # one of DELEGATION_STATUSES
    result: str = ""  # result text (done) or error message (error)
    result_time: float | None = None  # session seconds when the result arrived


@dataclasses.dataclass(frozen=True)
class ContextPackage:
    """Everything a background backend gets for one delegated request. Times are session seconds."""

    session_id: str
    request: str
    time: float  # session time of the delegation
    user_words: tuple[Word, ...] = ()
    model_words: tuple[Word, ...] = ()
    other_words: tuple[Word, ...] = ()  # third voices heard in the user channel
    user_text: tuple[TextEvent, ...] = ()  # typed user messages
    model_text: tuple[TextEvent, ...] = ()  # the model's own text stream (spoken or not), as timed pieces
    delegations: tuple[Delegation, ...] = ()
    metadata: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    created_unix: float = 0.0  # wall-clock creation time (logging / replay only)
    version: int = CONTEXT_PACKAGE_VERSION

    # ---- serialisation ------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["metadata"] = dict(self.metadata)
        return d

    def to_json(self) -> str:
        try:
            return json.dumps(self.to_dict(), ensure_ascii=False, sort_keys=True)
        except TypeError as e:
            raise ValueError(f"ContextPackage {self.session_id!r}: metadata is not JSON-serialisable: {e}") from e

    @classmethod
    def from_dict(cls, d: Any) -> ContextPackage:
        if not isinstance(d, dict):
            raise ValueError(f"ContextPackage: expected a JSON object, got {type(d).__name__}")
        if "version" not in d:
            raise ValueError("ContextPackage: payload has no 'version' field")
        if d["version"] != CONTEXT_PACKAGE_VERSION:
            raise ValueError(
                f"ContextPackage: unsupported version {d['version']!r}; "
                f"this code reads version {CONTEXT_PACKAGE_VERSION}"
            )
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"ContextPackage: unknown field(s) {unknown}")
        for name in ("session_id", "request", "time"):
            if name not in d:
                raise ValueError(f"ContextPackage: missing required field {name!r}")
        try:
            return cls(
                session_id=_typed(d, "session_id", str),
                request=_typed(d, "request", str),
                time=float(_typed(d, "time", (int, float))),
                user_words=_words(d.get("user_words", []), "user_words"),
                model_words=_words(d.get("model_words", []), "model_words"),
                other_words=_words(d.get("other_words", []), "other_words"),
                user_text=_texts(d.get("user_text", []), "user_text"),
                model_text=_texts(d.get("model_text", []), "model_text"),
                delegations=_delegations(d.get("delegations", [])),
                metadata=_typed(d, "metadata", dict, default={}),
                created_unix=float(_typed(d, "created_unix", (int, float), default=0.0)),
            )
        except (KeyError, TypeError) as e:
            raise ValueError(f"ContextPackage: malformed payload: {e}") from e

    @classmethod
    def from_json(cls, payload: str | bytes) -> ContextPackage:
        try:
            d = json.loads(payload)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"ContextPackage: payload is not valid JSON: {e}") from e
        return cls.from_dict(d)


def _typed(d: dict, name: str, types, default: Any = None) -> Any:
    v = d.get(name, default)
    if isinstance(v, bool) or not isinstance(v, types):
        raise ValueError(f"ContextPackage: field {name!r} has type {type(v).__name__}, expected {types}")
    return v


def _items(v: Any, name: str) -> list[dict]:
    if not isinstance(v, list) or not all(isinstance(x, dict) for x in v):
        raise ValueError(f"ContextPackage: field {name!r} must be a list of objects")
    return v


def _words(v: Any, name: str) -> tuple[Word, ...]:
    return tuple(Word(str(x["text"]), float(x["start"]), float(x["end"])) for x in _items(v, name))


def _texts(v: Any, name: str) -> tuple[TextEvent, ...]:
    return tuple(TextEvent(str(x["text"]), float(x["time"])) for x in _items(v, name))


def _delegations(v: Any) -> tuple[Delegation, ...]:
    out = []
    for x in _items(v, "delegations"):
        status = str(x.get("status", "pending"))
        if status not in DELEGATION_STATUSES:
            raise ValueError(f"ContextPackage: delegation status {status!r} not in {DELEGATION_STATUSES}")
        rt = x.get("result_time")
        out.append(
            Delegation(
                job_id=int(x["job_id"]),
                request=str(x["request"]),
                time=float(x["time"]),
                status=status,
                result=str(x.get("result", "")),
                result_time=None if rt is None else float(rt),
            )
        )
    return tuple(out)


# ---- building a package from a session's streams ------------------------------------------
WordLike = Word | tuple


def _as_word(w: WordLike) -> Word:
    """A Word, a (time, text) tuple (a point in time) or a (text, start, end) tuple."""
    if isinstance(w, Word):
        return w
    if isinstance(w, tuple) and len(w) == 2:
        return Word(str(w[1]), float(w[0]), float(w[0]))
    if isinstance(w, tuple) and len(w) == 3:
        return Word(str(w[0]), float(w[1]), float(w[2]))
    raise ValueError(f"build_context_package: cannot read {w!r} as a word (Word, (time, text) or (text, start, end))")


def _as_text(x: TextEvent | tuple) -> TextEvent:
    if isinstance(x, TextEvent):
        return x
    if isinstance(x, tuple) and len(x) == 2:
        return TextEvent(str(x[1]), float(x[0]))
    raise ValueError(f"build_context_package: cannot read {x!r} as text (TextEvent or (time, text))")


def build_context_package(
    session_id: str,
    request: str,
    time: float,
    *,
    user_words: Iterable[WordLike] = (),
    model_words: Iterable[WordLike] = (),
    other_words: Iterable[WordLike] = (),
    user_text: Iterable[TextEvent | tuple] = (),
    model_text: Iterable[TextEvent | tuple] = (),
    delegations: Iterable[Delegation] = (),
    metadata: Mapping[str, Any] | None = None,
    max_words: int | None = None,
) -> ContextPackage:
    """Builds the package for a delegation at session time `time` from plain timed streams.

    Takes plain lists (not engine objects) so the streaming engine, tests and offline tools can
    all call it. Only what was known at `time` is included (nothing from the future leaks into
    a package built from a recorded episode); `max_words` keeps the most recent words per
    speaker so a long session still produces a bounded package.
    """

    def words(ws: Iterable[WordLike]) -> tuple[Word, ...]:
        out = sorted((_as_word(w) for w in ws), key=lambda w: (w.start, w.end))
        out = [w for w in out if w.start <= time]
        return tuple(out[-max_words:] if max_words else out)

    def texts(xs: Iterable[TextEvent | tuple]) -> tuple[TextEvent, ...]:
        return tuple(sorted((e for e in map(_as_text, xs) if e.time <= time), key=lambda e: e.time))

    return ContextPackage(
        session_id=str(session_id),
        request=str(request).strip(),
        time=float(time),
        user_words=words(user_words),
        model_words=words(model_words),
        other_words=words(other_words),
        user_text=texts(user_text),
        model_text=texts(model_text),
        delegations=tuple(delegations),
        metadata=dict(metadata or {}),
        created_unix=_time.time(),
    )


def render_transcript(package: ContextPackage) -> str:
    """The conversation as time-ordered lines, e.g. `[1.2s] user: what is 12 times 7`.

    Consecutive words of one speaker are joined into one line; this is what text backends
    (HTTP chat models, local LMs) read.
    """
    items: list[tuple[float, str, str]] = []
    for who, ws in (("user", package.user_words), ("assistant", package.model_words), ("other", package.other_words)):
        items += [(w.start, who, w.text) for w in ws]
    items += [(e.time, "user (typed)", e.text) for e in package.user_text]
    items.sort(key=lambda x: x[0])
    lines: list[str] = []
    last_who = None
    for t, who, text in items:
        if who == last_who and who != "user (typed)":
            lines[-1] += " " + text
        else:
            lines.append(f"[{t:.1f}s] {who}: {text}")
        last_who = who
    for d in package.delegations:
        extra = f" -> {d.result}" if d.result else ""
        lines.append(f"[{d.time:.1f}s] earlier delegation #{d.job_id} ({d.status}): {d.request}{extra}")
    return "\n".join(lines)


SYSTEM_PROMPT = (
    "You are the background model of a real-time voice assistant. The assistant keeps talking with "
    "the user while you work. Answer the delegated request using the conversation for context. Reply "
    "with a short answer the assistant can say out loud."
)


def chat_messages(package: ContextPackage, system_prompt: str = SYSTEM_PROMPT) -> list[dict[str, str]]:
    """OpenAI-style chat messages for the package: system prompt, then transcript + request."""
    user = f"Conversation so far:\n{render_transcript(package) or '(nothing yet)'}\n\nRequest: {package.request}"
    return [{"role": "system", "content": system_prompt}, {"role": "user", "content": user}]


@dataclasses.dataclass(frozen=True)
class DelegationEvent:
    """What the runner reports about a job. `time` is the runner clock when the event was produced.

    kind: "chunk" (text = the new piece), "done" (text = the full result), "error" (text = the
    message), "cancelled" (text = the reason). After a terminal event a job reports nothing more.
    """

    kind: str
    job_id: int
    session_id: str
    time: float
    text: str = ""

    def __post_init__(self):
        if self.kind not in EVENT_KINDS:
            raise ValueError(f"DelegationEvent: unknown kind {self.kind!r}; expected one of {EVENT_KINDS}")

    @property
    def terminal(self) -> bool:
        return self.kind in TERMINAL_KINDS

    def to_background_event(self) -> BackgroundEvent | None:
        """The episode record of a finished job (result/error), e.g. to log a live session as an Episode."""
        if self.kind == DONE:
            return BackgroundEvent("result", self.time, self.text, self.job_id)
        if self.kind == ERROR:
            return BackgroundEvent("error", self.time, self.text, self.job_id)
        return None
