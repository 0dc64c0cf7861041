"""Delegation wired into streaming sessions: Scheduler(engine, hub=...) end to end.

The engine is a random-init tiny model, so the model text is teacher-forced (`Chunk.force`)
from a rendered delegation-task episode whose text holds DELEGATE request DELEGATE_END; the
session must find that request in its own outputs, hand the hub a package with the
conversation so far, and feed the result into later background slots. References are
independent: the episode's own request / words, `pack.delegation_requests` on the transcript,
and `text_streams.background_tokens` + `fill_slots` packing of an episode with the result at
its expected time.
"""

import dataclasses
import threading
import time

import numpy as np
import pytest
from conftest import config_path
from flax import nnx

from interaction_jax.background import BackgroundRunner, DelegationHub, ToolBackend, make_hub
from interaction_jax.background.protocol import DelegationEvent
from interaction_jax.config_lib import load_config
from interaction_jax.data.episode import BackgroundEvent
from interaction_jax.data.speech import default_renderer
from interaction_jax.data.tasks import delegation
from interaction_jax.features.mel import FeatureParams
from interaction_jax.inference.engine import StreamEngine
from interaction_jax.inference.session import Chunk, DelegationScanner, Scheduler
from interaction_jax.model.interaction_model import InteractionModel
from interaction_jax.streams import pack, text_streams
from interaction_jax.streams.layout import Kind
from interaction_jax.streams.tokenizer import NUM_CONTROL, ByteTokenizer, Control

TOK = ByteTokenizer()
DELAY = 1.5  # deterministic mode: session seconds from request to result


@pytest.fixture(scope="module")
def engine():
    c = load_config(config_path("tiny.py"), ["inference.slots=3"])  # same compiled step as tests/inference
    return StreamEngine(c, InteractionModel(c, rngs=nnx.Rngs(0)), debug_outputs=True)


def _episode(variant: str, engine, seeds=range(3_000_000, 3_000_100)):
    """The first delegation-task episode of `variant` whose result (request + DELAY) lands well inside it."""
    renderer = default_renderer()
    for seed in seeds:
        ep = delegation.generate(seed, duration_s=6.0, renderer=renderer)
        meta = ep.metadata
        if meta["variant"] == variant and (variant == "direct" or meta["request_time"] + DELAY + 1.0 < ep.duration):
            params = FeatureParams.from_config(engine.config.features)
            return ep, pack.EpisodeGrid.from_episode(ep, engine.layout, TOK, params)
    raise AssertionError(f"no {variant} episode among the seeds")


@pytest.fixture(scope="module")
def delegate_episode(engine):
    return _episode("delegate", engine)


@pytest.fixture(scope="module")
def direct_episode(engine):
    return _episode("direct", engine)


def _chunks(ep, grid, layout, *, force: bool = True, extra: int = 0) -> list[Chunk]:
    """The episode as 200 ms chunks: audio, typed text, video, user words when they end, forced output.

    `extra` silent micro-turns follow, forced to PAD text (pack_window past the episode's end).
    """
    S = int(round(layout.micro_turn_s * ep.sample_rate))
    n = grid.num_turns + extra
    audio = np.pad(ep.user_audio, (0, max(0, n * S - len(ep.user_audio))))
    chunks = [
        Chunk(audio=audio[t * S : (t + 1) * S], force=pack.pack_window(grid, t, 1) if force else None) for t in range(n)
    ]
    for ev in ep.user_text:
        chunks[layout.input_turn(ev.time)].text = [*(chunks[layout.input_turn(ev.time)].text or []), ev.text]
    for w in ep.user_words:
        c = chunks[min(n - 1, layout.input_turn(w.end))]
        c.transcript = (*c.transcript, w)
    for fr in sorted(ep.video, key=lambda f: f.time):
        chunks[layout.input_turn(fr.time)].video = fr.image
    return chunks


class RecordingTool(ToolBackend):
    """The tool backend, remembering each package and its cancel event."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.packages, self.cancels = [], []

    def stream(self, package, cancel):
        self.packages.append(package)
        self.cancels.append(cancel)
        yield from super().stream(package, cancel)


def _record_background(engine, monkeypatch) -> dict[int, list[np.ndarray]]:
    """{slot: background-slot tokens fed at each of its active ticks}, captured at the engine's door."""
    fed: dict[int, list[np.ndarray]] = {}
    step = engine.step
    bg = engine.layout.block_slice(Kind.BACKGROUND)

    def recording_step(inputs):
        for slot in np.flatnonzero(inputs["active"]):
            fed.setdefault(int(slot), []).append(inputs["token_ids"][slot, bg].copy())
        return step(inputs)

    monkeypatch.setattr(engine, "step", recording_step)
    return fed


def _reference_background(ep, grid, layout, events: list[BackgroundEvent]) -> np.ndarray:
    """Training packing of `events` on the episode's grid: [num_turns, background_slots]."""
    ref_ep = dataclasses.replace(ep, background=events)
    ref, _ = text_streams.fill_slots(
        text_streams.background_tokens(ref_ep, layout, TOK), grid.num_turns, layout.background_slots
    )
    return ref


def _request(ep) -> tuple[float, str]:
    (req,) = [(e.time, e.text) for e in ep.background if e.kind == "request"]
    return req


def test_scanner_matches_offline_delegation_requests(engine):
    """Incremental scanning of random token rows == pack.delegation_requests over the whole stream."""
    rng = np.random.default_rng(0)
    layout = engine.layout
    specials = [int(Control.DELEGATE), int(Control.DELEGATE_END), int(Control.NOTHING), int(Control.SPEECH_START)]
    total = 0
    for trial in range(20):
        rows = rng.choice(specials + list(range(NUM_CONTROL + 97, NUM_CONTROL + 100)), size=(30, 4))
        scanner = DelegationScanner(layout, TOK)
        found = [r for t, row in enumerate(rows) for r in scanner.feed(t, row)]
        ref = pack.delegation_requests(pack.unpack(layout, TOK, np.arange(30), rows), TOK)
        assert found == ref, trial
        total += sum(len(req) > 0 for _, req in ref)
    assert total > 20  # the streams did hold non-empty requests, many spanning micro-turns


def test_deterministic_delegation_two_sessions(engine, delegate_episode, monkeypatch):
    """Request found in the forced output, full context in the package, result in the slots at the exact turn."""
    ep, grid = delegate_episode
    layout = engine.layout
    T = layout.micro_turn_s
    fed = _record_background(engine, monkeypatch)
    backend = RecordingTool()
    hub = DelegationHub(BackgroundRunner(backend, timeout_s=30), TOK, release_after_s=DELAY)
    sched = Scheduler(engine, hub=hub)
    a = sched.open_session(seed=1, session_id="a", metadata={"user": "alice"})
    chunks = _chunks(ep, grid, layout)
    join = 3  # session b starts three micro-turns later: its own clock
    for t in range(grid.num_turns + join):
        if t == join:
            b = sched.open_session(seed=2, session_id="b")
        if t < grid.num_turns:
            a.push(chunks[t])
        if t >= join:
            b.push(chunks[t - join])
        sched.tick()

    req_time, req_text = _request(ep)
    answer = delegation.answer_request(req_text)
    (end_turn,) = np.flatnonzero((grid.model_text == int(Control.DELEGATE_END)).any(axis=1))[:1]
    assert len(backend.packages) == 2 and {p.session_id for p in backend.packages} == {"a", "b"}
    for s in (a, b):
        (pkg,) = [p for p in backend.packages if p.session_id == s.id]
        (log,) = s.delegation_log()
        # The request is the episode's, stamped where the transcript (pack.unpack) puts DELEGATE.
        assert pkg.request == req_text and log.request == req_text
        assert [(pkg.time, req_text)] == pack.delegation_requests(s.transcript(), TOK)
        assert req_time - T < pkg.time < req_time + 1.0
        # The conversation so far: the user's words / typed text heard by the DELEGATE_END turn.
        words = sorted((w for w in ep.user_words if layout.input_turn(w.end) <= end_turn and w.start <= pkg.time),
                       key=lambda w: (w.start, w.end))
        assert pkg.user_words == tuple(words)
        typed = [(layout.input_turn(e.time) * T, e.text) for e in ep.user_text if layout.input_turn(e.time) <= end_turn]
        assert [(e.time, e.text) for e in pkg.user_text] == typed
        assert words or typed  # the question is in the package
        model_texts = [w.text for w in pkg.model_words]
        assert model_texts == [w.text for w in ep.model_words][: len(model_texts)]
        assert pkg.metadata["session_id"] == s.id and pkg.metadata["seed"] == s.seed
        assert pkg.delegations == ()  # nothing delegated before
        # The result enters the slots exactly where training packs a result at request + DELAY.
        r = round(pkg.time + DELAY, 6)
        assert (log.status, log.result, log.result_time) == ("done", answer, r)
        ref = _reference_background(ep, grid, layout, [BackgroundEvent("result", r, answer, log.job_id)])
        assert (ref == int(Control.BG_START)).any() and (ref == int(Control.BG_END)).any()
        np.testing.assert_array_equal(np.stack(fed[s.slot][-grid.num_turns :]), ref, err_msg=s.id)
    assert a.delegation_log()[0].job_id != b.delegation_log()[0].job_id
    a.close()
    b.close()


def test_slow_backend_keeps_cadence_and_close_cancels(engine, delegate_episode, monkeypatch):
    """Live mode: ticks never wait for a 30 s job; closing the session cancels it."""
    ep, grid = delegate_episode
    fed = _record_background(engine, monkeypatch)
    backend = RecordingTool(delay_s=30.0)
    runner = BackgroundRunner(backend, timeout_s=120)
    sched = Scheduler(engine, hub=DelegationHub(runner, TOK))
    s = sched.open_session(seed=3, session_id="slow")
    submitted_at = None
    for t, chunk in enumerate(_chunks(ep, grid, engine.layout)):
        s.push(chunk)
        assert set(sched.tick()) == {"slow"}
        if submitted_at is None and s.delegation_log():
            submitted_at = t
    assert submitted_at is not None and grid.num_turns - submitted_at > 5  # several ticks ran after the request
    (log,) = s.delegation_log()
    assert runner.active_jobs("slow") == [log.job_id] and log.status == "pending"
    assert not backend.cancels[0].is_set()
    assert all((x == int(Control.NOTHING)).all() for x in fed[s.slot])
    s.close()
    assert runner.active_jobs() == []
    assert backend.cancels[0].is_set()  # the worker thread was told to stop
    (log,) = s.delegation_log()
    assert log.status == "cancelled"


class Failing:
    name = "failing"

    def stream(self, package, cancel):
        raise RuntimeError(f"offline: {package.request[:6]}")
        yield  # pragma: no cover


def test_failing_backend_yields_error_in_slots(engine, delegate_episode, monkeypatch):
    ep, grid = delegate_episode
    fed = _record_background(engine, monkeypatch)
    sched = Scheduler(engine, hub=DelegationHub(BackgroundRunner(Failing(), timeout_s=30), TOK, release_after_s=DELAY))
    s = sched.open_session(seed=4)
    for chunk in _chunks(ep, grid, engine.layout):
        s.push(chunk)
        sched.tick()
    (log,) = s.delegation_log()
    msg = f"error: offline: {_request(ep)[1][:6]}"  # the short form the model reads
    assert [(log.time, log.request)] == pack.delegation_requests(s.transcript(), TOK)
    r = round(log.time + DELAY, 6)
    assert (log.status, log.result, log.result_time) == ("error", msg, r)
    ref = _reference_background(ep, grid, engine.layout, [BackgroundEvent("error", r, msg, log.job_id)])
    assert (ref == int(Control.BG_ERROR)).any()
    np.testing.assert_array_equal(np.stack(fed[s.slot]), ref)
    s.close()


def test_live_timeout_becomes_error_event(engine, delegate_episode, monkeypatch):
    ep, grid = delegate_episode
    fed = _record_background(engine, monkeypatch)
    runner = BackgroundRunner(RecordingTool(delay_s=30.0), timeout_s=0.2)
    sched = Scheduler(engine, hub=DelegationHub(runner, TOK))
    s = sched.open_session(seed=5)
    for chunk in _chunks(ep, grid, engine.layout, extra=10):  # room for the whole error message
        s.push(chunk)
        sched.tick()
        if s.delegation_log():
            time.sleep(0.05)  # let wall time pass the 0.2 s job timeout while the session goes on
    (log,) = s.delegation_log()
    assert (log.status, log.result) == ("error", "error: timeout")
    text = TOK.decode(np.concatenate(fed[s.slot]), keep_control=True)
    assert text == f"<BG_ERROR>{log.result}<BG_END>"
    s.close()


def test_client_background_events_go_through_the_hub(engine, direct_episode, monkeypatch):
    """With a hub, Chunk.background events share the hub's queue; no request in the text -> no job."""
    ep, grid = direct_episode
    fed = _record_background(engine, monkeypatch)
    backend = RecordingTool()
    sched = Scheduler(engine, hub=DelegationHub(BackgroundRunner(backend), TOK))
    s = sched.open_session(seed=6)
    chunks = _chunks(ep, grid, engine.layout)
    chunks[2].background = [DelegationEvent("done", 99, s.id, 0.4, "forty two")]
    for chunk in chunks:
        s.push(chunk)
        sched.tick()
    assert backend.packages == [] and s.delegation_log() == []
    ref = _reference_background(ep, grid, engine.layout, [BackgroundEvent("result", 0.4, "forty two", 99)])
    np.testing.assert_array_equal(np.stack(fed[s.slot]), ref)
    s.close()


def test_hub_configuration_errors(engine):
    with pytest.raises(ValueError, match="per-job timeout"):
        DelegationHub(BackgroundRunner(ToolBackend(), timeout_s=None), TOK, release_after_s=1.0)
    hub = DelegationHub(BackgroundRunner(ToolBackend(), timeout_s=5), TOK, release_after_s=1.0)
    with pytest.raises(ValueError, match="needs clock="):
        hub.open("x")

    class OtherTokenizer:
        vocab_size = 1000

    with pytest.raises(ValueError, match="same tokenizer"):
        Scheduler(engine, hub=DelegationHub(BackgroundRunner(ToolBackend()), OtherTokenizer()))
    c = load_config(config_path("tiny.py"), ["background.clock=session", "background.sim_delay_s=3.0"])
    assert make_hub(c, TOK).release_after_s == 3.0
    with pytest.raises(ValueError, match="background.clock"):
        make_hub(load_config(config_path("tiny.py"), ["background.clock=sometimes"]), TOK)


def test_no_hub_keeps_client_background(engine):
    """Without a hub nothing is delegated and Chunk.background still feeds the slots (old behaviour)."""
    sched = Scheduler(engine)
    s = sched.open_session(seed=7)
    s.push(Chunk(background=[DelegationEvent("done", 1, s.id, 0.0, "ok")]))
    inputs = engine.empty_inputs()
    s.fill_inputs(inputs, s.pending.popleft())
    bg = inputs["token_ids"][s.slot, engine.layout.block_slice(Kind.BACKGROUND)]
    assert TOK.decode(bg, keep_control=True) == "<BG_START>ok<BG_END>"
    assert s.delegation_log() == []
    s.close()


def test_close_ends_the_job_thread(engine):
    runner = BackgroundRunner(ToolBackend(delay_s=30.0), timeout_s=60)
    hub = DelegationHub(runner, TOK)
    sched = Scheduler(engine, hub=hub)
    s = sched.open_session(seed=8)
    job = hub.delegate(s.id, "what is 2 plus 2", 0.0)

    def alive() -> bool:
        return any(th.name == f"bg-job-{job}" and th.is_alive() for th in threading.enumerate())

    assert alive()
    s.close()
    deadline = time.monotonic() + 5
    while alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not alive()
