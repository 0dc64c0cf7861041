"""Per-session delegation bookkeeping: the seam where the streaming engine plugs in.

One `BackgroundRunner` serves every session of a process; `DelegationHub` routes its events to
per-session `BackgroundQueue`s and keeps each session's delegation records, so the *next*
package of a session lists what is still pending and what already came back (the background
model should not redo work or contradict an earlier answer). The engine's loop per micro-turn:

    hub.pump()                                   # non-blocking: route whatever arrived
    bg = hub.take(session_id, layout.background_slots)   # -> the input block's background slots
    ... decode; on DELEGATE ... DELEGATE_END in the model text:
    hub.delegate(session_id, request, now, user_words=..., model_words=..., ...)
    ... on session close: hub.close(session_id)

Event times are the runner's clock; give the runner the session clock (one session per
process) or keep monotonic time and convert when logging.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

from interaction_jax.background.protocol import (
    CANCELLED,
    DONE,
    ERROR,
    Delegation,
    DelegationEvent,
    build_context_package,
)
from interaction_jax.background.runner import BackgroundRunner
from interaction_jax.background.slots import BackgroundQueue
from interaction_jax.data.episode import BackgroundEvent

_STATUS = {DONE: "done", ERROR: "error", CANCELLED: "cancelled"}


@dataclasses.dataclass
class _Session:
    queue: BackgroundQueue
    metadata: dict[str, Any]
    records: dict[int, Delegation] = dataclasses.field(default_factory=dict)


class DelegationHub:
    """Sessions -> delegations -> background-slot tokens, over one shared runner."""

    def __init__(self, runner: BackgroundRunner, tokenizer, *, stream: bool = True):
        self.runner = runner
        self.tokenizer = tokenizer
        self.stream = stream
        self._sessions: dict[str, _Session] = {}
        self._owner: dict[int, str] = {}  # job id -> session id

    def open(self, session_id: str, metadata: Mapping[str, Any] | None = None) -> None:
        if session_id in self._sessions:
            raise ValueError(f"DelegationHub: session {session_id!r} is already open")
        self._sessions[session_id] = _Session(BackgroundQueue(self.tokenizer, stream=self.stream), dict(metadata or {}))

    def _session(self, session_id: str) -> _Session:
        try:
            return self._sessions[session_id]
        except KeyError:
            raise KeyError(f"DelegationHub: no open session {session_id!r}") from None

    def delegate(self, session_id: str, request: str, time: float, **streams: Iterable) -> int:
        """Builds the session's context package (with its delegation records) and submits it.

        `streams` are `build_context_package`'s keyword streams (user_words, model_words, ...).
        """
        s = self._session(session_id)
        package = build_context_package(
            session_id, request, time, delegations=self.delegations(session_id), metadata=s.metadata, **streams
        )
        job_id = self.runner.submit(package)
        s.records[job_id] = Delegation(job_id, package.request, float(time))
        self._owner[job_id] = session_id
        return job_id

    def pump(self) -> list[DelegationEvent]:
        """Polls the runner once (non-blocking) and routes events; returns them (for logging)."""
        events = self.runner.poll()
        for ev in events:
            sid = self._owner.get(ev.job_id)
            s = self._sessions.get(sid) if sid is not None else None
            if s is None:
                continue  # session already closed
            s.queue.push(ev)
            if ev.terminal:
                rec = s.records[ev.job_id]
                s.records[ev.job_id] = dataclasses.replace(
                    rec, status=_STATUS[ev.kind], result=ev.text if ev.kind != CANCELLED else "", result_time=ev.time
                )
        return events

    def take(self, session_id: str, n_slots: int) -> list[int]:
        """This micro-turn's background-slot tokens for the session (NOTHING-padded)."""
        return self._session(session_id).queue.take(n_slots)

    def delegations(self, session_id: str) -> tuple[Delegation, ...]:
        return tuple(sorted(self._session(session_id).records.values(), key=lambda d: d.job_id))

    def background_events(self, session_id: str) -> list[BackgroundEvent]:
        """The session's delegations as episode `BackgroundEvent`s (log a live session as an Episode)."""
        out: list[BackgroundEvent] = []
        for d in self.delegations(session_id):
            out.append(BackgroundEvent("request", d.time, d.request, d.job_id))
            if d.status in ("done", "error") and d.result_time is not None:
                kind = "result" if d.status == "done" else "error"
                out.append(BackgroundEvent(kind, d.result_time, d.result, d.job_id))
        return sorted(out, key=lambda e: e.time)

    def close(self, session_id: str) -> list[int]:
        """Cancels the session's unfinished jobs and forgets the session; returns the cancelled ids."""
        self._session(session_id)
        cancelled = self.runner.cancel_session(session_id)
        del self._sessions[session_id]
        self._owner = {j: sid for j, sid in self._owner.items() if sid != session_id}
        return cancelled
