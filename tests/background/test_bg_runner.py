"""BackgroundRunner: never blocks the micro-turn clock; several jobs; cancel; timeout; failures."""

import threading
import time

import pytest

from interaction_jax.background import BackgroundRunner, ToolBackend, make_runner
from interaction_jax.background.runner import MAX_ERROR_CHARS, error_text
from interaction_jax.config_lib import base_config

from .helpers import package, wait_for


class SleepyBackend:
    """Blocks its thread for `sleep_s` without looking at `cancel` (the worst case)."""

    name = "sleepy"

    def __init__(self, sleep_s: float, chunks=("hel", "lo")):
        self.sleep_s = sleep_s
        self.chunks = chunks

    def stream(self, package, cancel):
        time.sleep(self.sleep_s)
        yield from self.chunks


class FailingBackend:
    name = "failing"

    def stream(self, package, cancel):
        yield "partial "
        raise RuntimeError("model server exploded")


class GateBackend:
    """Streams one chunk, then waits for the test to open the gate (or for cancellation)."""

    name = "gate"

    def __init__(self):
        self.gate = threading.Event()
        self.started = threading.Semaphore(0)

    def stream(self, package, cancel):
        self.started.release()
        yield package.request + ":"
        while not self.gate.wait(0.01):
            if cancel.is_set():
                return
        yield "ok"


def test_never_blocks_the_micro_turn_clock():
    """submit/poll return while the backend is still working (held on a gate); the result comes later.

    Structural, not timed: if submit or poll waited for the backend they could not return
    before the gate opens, so the calls run in a helper thread that must finish first.
    """
    fake_now = [0.0]
    backend = GateBackend()
    runner = BackgroundRunner(backend, max_concurrent=2, timeout_s=None, clock=lambda: fake_now[0])
    out = {}

    def caller():
        out["job"] = runner.submit(package("q"))
        assert backend.started.acquire(timeout=10)  # the job is running ...
        events = []
        for _ in range(10):  # ... while ten micro-turns tick and poll
            fake_now[0] += 0.2
            events += runner.poll()
        out["events"] = events

    t = threading.Thread(target=caller)
    t.start()
    t.join(timeout=30)
    assert not t.is_alive(), "submit/poll blocked on the backend"
    assert not any(e.terminal for e in out["events"])  # nothing final yet: the gate is still closed
    backend.gate.set()
    events = out["events"] + wait_for(runner, 1)
    assert [e.kind for e in events if e.kind != "chunk"] == ["done"]
    assert events[-1].job_id == out["job"] and events[-1].text == "q:ok"
    assert events[-1].time > 1.9  # stamped with the session clock when it arrived
    runner.close()


def test_several_jobs_and_sessions_stream_results():
    runner = BackgroundRunner(ToolBackend(chunk_chars=3), max_concurrent=2, timeout_s=10)
    reqs = ["what is 2 times 3", "what is the weather in paris", "what is 10 plus 5", "what is 9 minus 10"]
    ids = [runner.submit(package(r, session=f"s{i % 2}")) for i, r in enumerate(reqs)]
    assert len(set(ids)) == 4
    events = wait_for(runner, 4)
    done = {e.job_id: e.text for e in events if e.kind == "done"}
    assert [done[i] for i in ids] == ["6", "sunny and 18 degrees", "15", "-1"]
    chunks = "".join(e.text for e in events if e.kind == "chunk" and e.job_id == ids[1])
    assert chunks == "sunny and 18 degrees"
    assert {e.session_id for e in events if e.job_id == ids[1]} == {"s1"}
    assert runner.active_jobs() == []


def test_max_concurrent_queues_without_blocking():
    backend = GateBackend()
    runner = BackgroundRunner(backend, max_concurrent=1, timeout_s=10)
    a, b = runner.submit(package("a")), runner.submit(package("b"))
    assert backend.started.acquire(timeout=5)
    assert not backend.started.acquire(timeout=0.1)  # b waits for a's slot
    assert sorted(runner.active_jobs()) == [a, b]
    backend.gate.set()
    events = wait_for(runner, 2)
    assert [e.text for e in events if e.kind == "done"] == ["a:ok", "b:ok"]


def test_cancel_and_cancel_session():
    backend = GateBackend()
    runner = BackgroundRunner(backend, max_concurrent=1, timeout_s=10)
    a = runner.submit(package("a", session="x"))
    b = runner.submit(package("b", session="x"))  # still queued
    c = runner.submit(package("c", session="y"))
    assert backend.started.acquire(timeout=5)
    assert runner.cancel(a)
    assert not runner.cancel(a) and not runner.cancel(999)
    assert runner.cancel_session("x") == [b]
    assert runner.cancel_session("x") == []
    backend.gate.set()
    events = wait_for(runner, 3)
    by_job = {j: [e.kind for e in events if e.job_id == j] for j in (a, b, c)}
    assert by_job[a][-1] == "cancelled" and by_job[a].count("cancelled") == 1
    assert by_job[b][-1] == "cancelled" and "done" not in by_job[b]  # b got a's slot, then was cancelled
    assert by_job[c][-1] == "done"  # the other session is untouched
    time.sleep(0.05)
    assert runner.poll() == []  # nothing after a terminal event


def test_timeout_gives_error_event_and_frees_the_slot(caplog):
    runner = BackgroundRunner(SleepyBackend(3.0), max_concurrent=1, timeout_s=0.2)
    a = runner.submit(package())
    events = wait_for(runner, 1, timeout=2.0)
    assert events[-1].kind == "error" and events[-1].job_id == a
    assert events[-1].text == "error: timeout" and "timed out after 0.2 s" in caplog.text
    runner.backend = ToolBackend()  # the abandoned thread no longer holds the only slot
    b = runner.submit(package("what is 1 plus 1"))
    events = wait_for(runner, 1, timeout=2.0)
    assert [(e.job_id, e.kind, e.text) for e in events if e.terminal] == [(b, "done", "2")]


def test_backend_exception_becomes_error_event(caplog):
    runner = BackgroundRunner(FailingBackend(), timeout_s=10)
    a = runner.submit(package())
    b = runner.submit(package())
    events = wait_for(runner, 2)
    for j in (a, b):
        kinds = [(e.kind, e.text) for e in events if e.job_id == j]
        assert kinds == [("chunk", "partial "), ("error", "error: model server exploded")]
    unservable = BackgroundRunner(ToolBackend(), timeout_s=10)
    unservable.submit(package("sing me a song"))
    (err,) = [e for e in wait_for(unservable, 1) if e.terminal]
    assert err.kind == "error" and err.text.startswith("error: answer_request: cannot serve")
    assert len(err.text) <= MAX_ERROR_CHARS and "sing me a song" in caplog.text  # the detail is in the log


def test_error_texts_are_short_kinds():
    class Kinded(RuntimeError):
        kind = "http 503"

    assert error_text(Kinded("http://very.long.example.com/v1/chat/completions: HTTP 503 ...")) == "error: http 503"
    assert error_text(TimeoutError()) == "error: timeout"
    long = error_text(RuntimeError("x" * 200))
    assert len(long) == MAX_ERROR_CHARS and long.startswith("error: xxx") and long.endswith("...")


def test_close_and_arguments():
    runner = BackgroundRunner(GateBackend(), timeout_s=None)
    runner.submit(package())
    runner.close(wait_s=1.0)
    assert [e.kind for e in runner.poll()][-1] == "cancelled"
    with pytest.raises(RuntimeError, match="after close"):
        runner.submit(package())
    with pytest.raises(ValueError, match="max_concurrent"):
        BackgroundRunner(ToolBackend(), max_concurrent=0)
    with pytest.raises(ValueError, match="timeout_s"):
        BackgroundRunner(ToolBackend(), timeout_s=0)


def test_make_runner_from_config():
    c = base_config()
    c.background.max_concurrent = 3
    c.background.timeout_s = 5.0
    runner = make_runner(c)
    assert runner.max_concurrent == 3 and runner.timeout_s == 5.0 and runner.backend.name == "tool"
    runner.submit(package("what is 6 times 7"))
    assert [e.text for e in wait_for(runner, 1) if e.kind == "done"] == ["42"]
