"""DelegationHub: per-session routing, delegation records in later packages, close cancels."""

import threading
import time

import pytest

from interaction_jax.background import BackgroundRunner, DelegationHub, ToolBackend
from interaction_jax.streams.tokenizer import ByteTokenizer

TOK = ByteTokenizer()


class RecordingBackend(ToolBackend):
    """The tool backend, remembering every package it was given."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.packages = []

    def stream(self, package, cancel):
        self.packages.append(package)
        yield from super().stream(package, cancel)


def _pump_until(hub, n_terminal, timeout=10.0):
    seen = []
    end = time.monotonic() + timeout
    while sum(e.terminal for e in seen) < n_terminal:
        assert time.monotonic() < end, seen
        seen += hub.pump()
        time.sleep(0.005)
    return seen


def test_sessions_get_their_own_results_and_records():
    backend = RecordingBackend()
    now = [1.5]  # the session clock (event times are in the runner's clock)
    hub = DelegationHub(BackgroundRunner(backend, timeout_s=10, clock=lambda: now[0]), TOK)
    hub.open("a", metadata={"user": "alice"})
    hub.open("b")
    with pytest.raises(ValueError, match="already open"):
        hub.open("a")
    ja = hub.delegate("a", "what is 2 plus 2", 1.0, user_words=[(0.5, "what"), (0.7, "is")])
    jb = hub.delegate("b", "what is the weather in cairo", 1.2)
    _pump_until(hub, 2)
    text_a = TOK.decode(hub.take("a", 8), keep_control=True)
    text_b = TOK.decode(hub.take("b", 40), keep_control=True)
    assert text_a == "<BG_START>4<BG_END>"
    assert text_b == "<BG_START>hot and 35 degrees<BG_END>"
    (rec,) = hub.delegations("a")
    assert (rec.job_id, rec.status, rec.result) == (ja, "done", "4") and rec.result_time is not None
    assert hub.delegations("b")[0].job_id == jb
    # The next package of session a carries the earlier delegation and the session metadata.
    now[0] = 2.5
    hub.delegate("a", "what is 3 times 3", 2.0)
    _pump_until(hub, 1)
    last = backend.packages[-1]
    assert [d.job_id for d in last.delegations] == [ja] and last.delegations[0].result == "4"
    assert last.metadata == {"user": "alice"}
    kinds = [(e.kind, e.text) for e in hub.background_events("a")]
    assert kinds == [("request", "what is 2 plus 2"), ("result", "4"), ("request", "what is 3 times 3")] + [
        ("result", "9")
    ]


def test_close_cancels_pending_jobs_and_drops_late_events():
    release = threading.Event()

    class Slow:
        name = "slow"

        def stream(self, package, cancel):
            release.wait(5)
            yield "late"

    runner = BackgroundRunner(Slow(), timeout_s=10)
    hub = DelegationHub(runner, TOK)
    hub.open("s")
    j = hub.delegate("s", "anything", 0.0)
    assert hub.close("s") == [j]
    release.set()
    time.sleep(0.05)
    assert [e.kind for e in hub.pump()] == ["cancelled"]  # routed nowhere: the session is gone
    with pytest.raises(KeyError, match="no open session"):
        hub.take("s", 4)
