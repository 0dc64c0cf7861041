"""Runs delegated jobs off the micro-turn clock.

The streaming step runs every 200 ms and must keep that cadence whatever a backend does, so
the caller's side of `BackgroundRunner` never waits: `submit` only records the job (and starts a
thread when a concurrency slot is free), `poll` only drains a queue and checks deadlines.

Each job runs in its own daemon thread that iterates the backend's chunk stream. Python cannot
kill a thread, so cancellation and timeouts are decided on the caller's side: the job is marked
finished, its terminal event (cancelled / error) is emitted at once, its concurrency slot is
freed, and whatever its thread produces afterwards is dropped. The thread is also told through a
`threading.Event` so cooperative backends stop early (the HTTP backend closes its connection at
the next line; its socket timeout bounds how long an abandoned thread can linger).

An error reaches the interaction model as a short text, `error: <kind>` (`error_text`): every
character costs background-slot tokens, so a full message with an endpoint URL would take
some twenty micro-turns to deliver. The full message goes to the host log (warning level).
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import logging
import queue
import threading
import time as _time
from collections.abc import Callable, Iterator
from typing import Protocol

from interaction_jax.background.protocol import (
    CANCELLED,
    CHUNK,
    DONE,
    ERROR,
    ContextPackage,
    DelegationEvent,
)

log = logging.getLogger(__name__)
MAX_ERROR_CHARS = 40  # of the error text the model reads


def error_text(error: BaseException | str) -> str:
    """`error: <kind>`, at most MAX_ERROR_CHARS: the exception's `kind` if it has one, else its message cut short."""
    if isinstance(error, str):
        kind = error
    elif getattr(error, "kind", None):
        kind = str(error.kind)
    elif isinstance(error, TimeoutError):
        kind = "timeout"
    else:
        kind = " ".join(str(error).split()) or type(error).__name__
    text = f"error: {kind}"
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 3].rstrip() + "..."


class Backend(Protocol):
    """A background model: streams the answer to a package as text chunks.

    `cancel` is set when the job is cancelled or timed out; long-running backends should check it
    (or wait on it instead of sleeping) and return early. Exceptions become error events whose
    text is `error_text(exception)` (its `kind` attribute, if any, else its message cut short);
    the full message is logged on the host, so messages must be safe to log (no secrets).
    """

    name: str

    def stream(self, package: ContextPackage, cancel: threading.Event) -> Iterator[str]: ...


@dataclasses.dataclass
class _Job:
    job_id: int
    package: ContextPackage
    cancel: threading.Event
    state: str = "queued"  # queued | running | finished
    deadline: float | None = None
    thread: threading.Thread | None = None


class BackgroundRunner:
    """Asynchronous delegation jobs for any number of sessions; never blocks its caller.

    Args:
      backend: any object with `stream(package, cancel) -> Iterator[str]`.
      max_concurrent: jobs running at once; further jobs wait (FIFO) without blocking `submit`.
      timeout_s: per-job limit measured from when the job starts running (queue time is not
        counted, so a burst of delegations does not time itself out); None = no limit.
      clock: time source for event times and deadlines (session clock; default monotonic).
    """

    def __init__(
        self,
        backend: Backend,
        *,
        max_concurrent: int = 4,
        timeout_s: float | None = 30.0,
        clock: Callable[[], float] = _time.monotonic,
    ):
        if max_concurrent < 1:
            raise ValueError(f"BackgroundRunner: max_concurrent must be >= 1, got {max_concurrent}")
        if timeout_s is not None and timeout_s <= 0:
            raise ValueError(f"BackgroundRunner: timeout_s must be > 0 or None, got {timeout_s}")
        self.backend = backend
        self.max_concurrent = int(max_concurrent)
        self.timeout_s = timeout_s
        self.clock = clock
        self._lock = threading.Lock()
        self._events: queue.SimpleQueue[DelegationEvent] = queue.SimpleQueue()
        self._jobs: dict[int, _Job] = {}
        self._waiting: collections.deque[int] = collections.deque()
        self._running = 0
        self._ids = itertools.count(1)
        self._closed = False

    def __repr__(self) -> str:
        return (
            f"BackgroundRunner(backend={getattr(self.backend, 'name', type(self.backend).__name__)!r}, "
            f"max_concurrent={self.max_concurrent}, timeout_s={self.timeout_s}, active={len(self.active_jobs())})"
        )

    # ---- caller side (never blocks beyond a short lock) ------------------------------------
    def submit(self, package: ContextPackage) -> int:
        """Queues a job and returns its id at once; the job starts when a slot is free."""
        with self._lock:
            if self._closed:
                raise RuntimeError("BackgroundRunner: submit after close()")
            job = _Job(next(self._ids), package, threading.Event())
            self._jobs[job.job_id] = job
            self._waiting.append(job.job_id)
            self._start_waiting_locked()
        return job.job_id

    def poll(self) -> list[DelegationEvent]:
        """Every event produced since the last poll (in production order), plus due timeouts."""
        self._expire()
        out: list[DelegationEvent] = []
        while True:
            try:
                out.append(self._events.get_nowait())
            except queue.Empty:
                return out

    def cancel(self, job_id: int, reason: str = "cancelled") -> bool:
        """Cancels a queued or running job; emits a `cancelled` event. False if already finished/unknown."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or job.state == "finished":
                return False
            self._finish_locked(job, DelegationEvent(CANCELLED, job_id, job.package.session_id, self.clock(), reason))
            return True

    def cancel_session(self, session_id: str, reason: str = "session closed") -> list[int]:
        """Cancels every unfinished job of a session (call on session close); returns their ids."""
        with self._lock:
            jobs = self._jobs.values()
            ids = [j.job_id for j in jobs if j.package.session_id == session_id and j.state != "finished"]
        return [i for i in ids if self.cancel(i, reason)]

    def active_jobs(self, session_id: str | None = None) -> list[int]:
        """Ids of queued or running jobs (optionally of one session)."""
        with self._lock:
            return [
                j.job_id
                for j in self._jobs.values()
                if j.state != "finished" and (session_id is None or j.package.session_id == session_id)
            ]

    def close(self, wait_s: float = 0.0) -> None:
        """Cancels everything; optionally waits up to `wait_s` for worker threads to return."""
        with self._lock:
            self._closed = True
            ids = [j.job_id for j in self._jobs.values() if j.state != "finished"]
        for i in ids:
            self.cancel(i, "runner closed")
        if wait_s > 0:
            end = _time.monotonic() + wait_s
            for j in list(self._jobs.values()):
                if j.thread is not None:
                    j.thread.join(max(0.0, end - _time.monotonic()))

    def __enter__(self) -> BackgroundRunner:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- internals --------------------------------------------------------------------------
    def _start_waiting_locked(self) -> None:
        while self._waiting and self._running < self.max_concurrent:
            job = self._jobs[self._waiting.popleft()]
            if job.state != "queued":
                continue
            job.state = "running"
            job.deadline = None if self.timeout_s is None else self.clock() + self.timeout_s
            self._running += 1
            job.thread = threading.Thread(target=self._work, args=(job,), name=f"bg-job-{job.job_id}", daemon=True)
            job.thread.start()

    def _finish_locked(self, job: _Job, event: DelegationEvent) -> None:
        """Makes `event` the job's last one; frees its slot and starts the next waiting job."""
        was_running = job.state == "running"
        job.state = "finished"
        job.cancel.set()
        self._events.put(event)
        if was_running:
            self._running -= 1
            self._start_waiting_locked()
        # Finished jobs keep no package (it can be large); the id stays so cancel() answers False.
        job.package = dataclasses.replace(job.package, user_words=(), model_words=(), other_words=())

    def _emit(self, job: _Job, kind: str, text: str) -> bool:
        """Emits from the worker unless the job already finished; returns whether it is still live."""
        with self._lock:
            if job.state == "finished":
                return False
            event = DelegationEvent(kind, job.job_id, job.package.session_id, self.clock(), text)
            if event.terminal:
                self._finish_locked(job, event)
            else:
                self._events.put(event)
            return True

    def _expire(self) -> None:
        now = self.clock()
        with self._lock:
            jobs = self._jobs.values()
            due = [j for j in jobs if j.state == "running" and j.deadline is not None and now >= j.deadline]
            for j in due:
                log.warning("background job %d (session %s) timed out after %g s", j.job_id,
                            j.package.session_id, self.timeout_s)
                text = error_text("timeout")
                self._finish_locked(j, DelegationEvent(ERROR, j.job_id, j.package.session_id, now, text))

    def _work(self, job: _Job) -> None:
        pieces: list[str] = []
        stream = None
        try:
            stream = self.backend.stream(job.package, job.cancel)
            for chunk in stream:
                if job.cancel.is_set():
                    return
                if self.timeout_s is not None and job.deadline is not None and self.clock() >= job.deadline:
                    self._expire()
                    return
                if not chunk:
                    continue
                pieces.append(chunk)
                if not self._emit(job, CHUNK, chunk):
                    return
            self._emit(job, DONE, "".join(pieces))
        except Exception as e:  # noqa: BLE001 - a backend failure must become an event, never a crash
            log.warning("background job %d (session %s) failed: %s", job.job_id, job.package.session_id,
                        str(e) or type(e).__name__)
            self._emit(job, ERROR, error_text(e))
        finally:
            close = getattr(stream, "close", None)
            if close is not None:
                try:
                    close()  # releases e.g. the HTTP connection of a cancelled or timed-out job now
                except Exception:  # noqa: BLE001 - the job is over either way
                    pass
