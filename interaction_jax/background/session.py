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

Clocks. Event times from the runner are its own clock (monotonic by default). A session opened
with `clock=` (a callable returning the session-time window `(start, end)` of the micro-turn
whose input block is filled next; `inference.session.Session.input_window`) gets its records'
`result_time` on the session clock instead:

  * live mode (default): a result reaches the session at the first `pump()` after its thread
    produced it; `result_time` = the start of that micro-turn's input window.
  * deterministic mode (`release_after_s=d`): a job's events are held and released by the
    `pump()` of the micro-turn whose input window holds `request_time + d` (rounded to 1 us),
    i.e. exactly where training packs a result that arrives `d` s after its request, whatever
    the wall-clock speed of the engine or the backend. If the job has not finished by then,
    that `pump()` waits for it (bounded by the runner's per-job timeout, which this mode
    requires): determinism is bought with cadence, so use it for evaluation and tests, never
    for a live conversation. Every event of a released job is restamped to its release time.
"""

from __future__ import annotations

import dataclasses
import time as _time
from collections.abc import Callable, Iterable, Mapping
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

# Session clock: () -> (start, end) seconds of the input window of the micro-turn filled next.
SessionClock = Callable[[], tuple[float, float]]


def _us(t: float) -> float:
    """Rounds to a microsecond so sums like 1.25 + 1.5 land on micro-turn boundaries exactly."""
    return round(float(t), 6)


@dataclasses.dataclass
class _Session:
    queue: BackgroundQueue
    metadata: dict[str, Any]
    clock: SessionClock | None = None
    records: dict[int, Delegation] = dataclasses.field(default_factory=dict)
    release: dict[int, float] = dataclasses.field(default_factory=dict)  # deterministic: job -> release time
    held: dict[int, list[DelegationEvent]] = dataclasses.field(default_factory=dict)


class DelegationHub:
    """Sessions -> delegations -> background-slot tokens, over one shared runner.

    Args:
      runner: the shared `BackgroundRunner`.
      tokenizer: the interaction model's tokenizer (result text -> background-slot tokens).
      stream: release result tokens as chunks arrive (see `BackgroundQueue`).
      release_after_s: deterministic mode (see the module docstring); None = live mode.
    """

    def __init__(
        self, runner: BackgroundRunner, tokenizer, *, stream: bool = True, release_after_s: float | None = None
    ):
        if release_after_s is not None:
            if release_after_s < 0:
                raise ValueError(f"DelegationHub: release_after_s must be >= 0 or None, got {release_after_s}")
            if runner.timeout_s is None:
                raise ValueError(
                    "DelegationHub: release_after_s (deterministic mode) waits for a job at its release time, so "
                    "the runner needs a per-job timeout (background.timeout_s > 0) to bound that wait"
                )
        self.runner = runner
        self.tokenizer = tokenizer
        self.stream = stream
        self.release_after_s = None if release_after_s is None else float(release_after_s)
        self._sessions: dict[str, _Session] = {}
        self._owner: dict[int, str] = {}  # job id -> session id

    @property
    def deterministic(self) -> bool:
        return self.release_after_s is not None

    def open(
        self, session_id: str, metadata: Mapping[str, Any] | None = None, *, clock: SessionClock | None = None
    ) -> None:
        """Starts routing for a session; `clock` puts its result times on the session clock."""
        if session_id in self._sessions:
            raise ValueError(f"DelegationHub: session {session_id!r} is already open")
        if self.deterministic and clock is None:
            raise ValueError(
                f"DelegationHub: session {session_id!r} needs clock= in deterministic mode (release_after_s is set): "
                "results are released on the session clock"
            )
        queue = BackgroundQueue(self.tokenizer, stream=self.stream)
        self._sessions[session_id] = _Session(queue, dict(metadata or {}), clock)

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
        if self.deterministic:
            s.release[job_id] = _us(float(time) + self.release_after_s)
            s.held[job_id] = []
        return job_id

    def push(self, session_id: str, events: Iterable[DelegationEvent]) -> None:
        """Feeds events that did not come from this hub's runner (e.g. a client's own) to the session's slots."""
        self._session(session_id).queue.push(list(events))

    def pump(self) -> list[DelegationEvent]:
        """Polls the runner once and routes events; returns them (for logging).

        Live mode never blocks. Deterministic mode also releases the jobs due in each session's
        next micro-turn, waiting for any that has not finished yet (see the module docstring).
        """
        events = self._poll()
        if self.deterministic:
            for s in list(self._sessions.values()):
                events += self._release_due(s)
        return events

    def _poll(self) -> list[DelegationEvent]:
        events = self.runner.poll()
        for ev in events:
            sid = self._owner.get(ev.job_id)
            s = self._sessions.get(sid) if sid is not None else None
            if s is None:
                continue  # session already closed
            if ev.job_id in s.held:
                s.held[ev.job_id].append(ev)
                continue
            s.queue.push(ev)
            if ev.terminal:
                self._record(s, ev, s.clock()[0] if s.clock is not None else ev.time)
        return events

    def _record(self, s: _Session, ev: DelegationEvent, result_time: float) -> None:
        rec = s.records[ev.job_id]
        result = ev.text if ev.kind != CANCELLED else ""
        s.records[ev.job_id] = dataclasses.replace(rec, status=_STATUS[ev.kind], result=result, result_time=result_time)

    def _release_due(self, s: _Session) -> list[DelegationEvent]:
        """Deterministic mode: pushes every held job whose release time falls before the window's end."""
        end = _us(s.clock()[1])
        due = sorted((t, j) for j, t in s.release.items() if t < end)
        events: list[DelegationEvent] = []
        for t, j in due:
            while not any(ev.terminal for ev in s.held[j]):
                # The job is due but still running: wait (bounded by the runner's per-job timeout).
                events += self._poll()
                if not any(ev.terminal for ev in s.held[j]):
                    _time.sleep(0.002)
            released = [dataclasses.replace(ev, time=t) for ev in s.held.pop(j)]
            del s.release[j]
            s.queue.push(released)
            self._record(s, released[-1], t)
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
        """Cancels the session's unfinished jobs and forgets the session; returns the cancelled ids.

        In deterministic mode, jobs that finished but were not released yet count as cancelled:
        their results never reached the session.
        """
        s = self._session(session_id)
        cancelled = self.runner.cancel_session(session_id)
        cancelled = sorted(set(cancelled) | set(s.release))
        del self._sessions[session_id]
        self._owner = {j: sid for j, sid in self._owner.items() if sid != session_id}
        return cancelled
