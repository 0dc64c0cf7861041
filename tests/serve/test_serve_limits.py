"""The server's limits and control events on loopback, in the step clock: the session-length limits
(the server's `max_session_s` and the `hard` context policy) end a session with `session_limit` and
a clean close; the message-rate limit closes only the client over it; delegation requested / result
arrived reach the client as `control` messages, at the times the deterministic hub gives."""

from __future__ import annotations

import asyncio
import json
import types

import aiohttp
import pytest
from conftest import config_path
from flax import nnx
from test_serve import TIMEOUT, ThreadServer, _assert_same, _audio, _health, _reference, engine  # noqa: F401

from interaction_jax import serve
from interaction_jax.background import BackgroundRunner, DelegationHub, ToolBackend
from interaction_jax.client import stream
from interaction_jax.config_lib import load_config
from interaction_jax.data.speech import default_renderer
from interaction_jax.data.tasks import delegation
from interaction_jax.features.mel import FeatureParams
from interaction_jax.inference.engine import StreamEngine
from interaction_jax.model.interaction_model import InteractionModel
from interaction_jax.streams import pack
from interaction_jax.streams.tokenizer import ByteTokenizer

DELAY = 1.5  # deterministic hub: session seconds from a request to its result


def _truncated(ref, turns: int):
    tokens, mel, pcm = ref
    return tokens[:turns], mel[:turns], pcm[:turns]


def test_server_session_length_limit_is_told_and_closed_cleanly(engine):  # noqa: F811 - fixture from test_serve
    srv = ThreadServer(engine, clock="step", max_session_s=0.4)  # two micro-turns
    audio = _audio(1.0, 11)
    try:
        res = asyncio.run(stream(srv.url, audio, seed=4, return_mel=True, timeout_s=TIMEOUT))
        free = asyncio.run(_health(srv.url))["free"]
    finally:
        srv.stop()
    assert res.done["code"] == "session_limit" and "0.4 s" in res.done["message"], res.done
    assert res.done["summary"]["micro_turns"] == 2 and not res.errors
    _assert_same(res, _truncated(_reference(engine, [(4, audio, [])])[0], 2))  # the turns it got are the usual ones
    assert free == engine.slots


@pytest.fixture(scope="module")
def hard_engine():
    c = load_config(config_path("tiny.py"), ["inference.slots=2", "inference.context_policy=hard",
                                             "inference.max_session_seconds=0.6"])
    eng = StreamEngine(c, InteractionModel(c, rngs=nnx.Rngs(0)))
    eng.step(eng.empty_inputs())  # compile here, not inside the client's timeout
    return eng


def test_hard_context_limit_is_told_and_closed_cleanly(hard_engine):
    srv = ThreadServer(hard_engine, clock="step")  # max_session_s (600 s) is far away: the policy's limit hits first
    audio = _audio(1.0, 12)
    try:
        res = asyncio.run(stream(srv.url, audio, seed=5, return_mel=True, timeout_s=TIMEOUT))
        free = asyncio.run(_health(srv.url))["free"]
    finally:
        srv.stop()
    assert res.done["code"] == "session_limit", res.done
    assert "hard context limit of 3 micro-turns" in res.done["message"]
    assert res.done["summary"]["micro_turns"] == 3
    _assert_same(res, _reference(hard_engine, [(5, audio[: 3 * 3200], [])])[0])  # the 3 turns before the limit
    assert free == hard_engine.slots


def test_message_rate_limit_closes_only_that_session(engine, monkeypatch):  # noqa: F811
    # A frozen clock for the token bucket: it never refills, so exactly `max_messages_per_s` messages pass.
    frozen = types.SimpleNamespace(monotonic=lambda: 1000.0, perf_counter=serve.time.perf_counter, time=serve.time.time)
    monkeypatch.setattr(serve, "time", frozen)
    limit = 12
    srv = ThreadServer(engine, clock="step", max_messages_per_s=float(limit))
    audio, texts = _audio(0.6, 13), [(0.2, "still here")]  # 3 chunks + 1 text + end: under the limit

    async def flood():
        async with aiohttp.ClientSession() as http, http.ws_connect(srv.url + "/ws") as ws:
            await ws.send_str(json.dumps({"type": "hello", "sample_rate": 16000}))
            for _ in range(limit + 8):
                await ws.send_str(json.dumps({"type": "ping"}))
            replies = [json.loads(m.data) async for m in ws if m.type == aiohttp.WSMsgType.TEXT]
            return replies, ws.close_code

    async def go():
        return await asyncio.gather(flood(), stream(srv.url, audio, text_events=texts, seed=6, return_mel=True,
                                                    timeout_s=TIMEOUT))

    try:
        (replies, close), good = asyncio.run(go())
        free = asyncio.run(_health(srv.url))["free"]
    finally:
        srv.stop()
    kinds = [r["type"] for r in replies]
    assert kinds == ["ready"] + ["pong"] * limit + ["error"], kinds
    assert replies[-1]["code"] == "rate_limited" and replies[-1]["fatal"] and close == serve.CLOSE_POLICY
    _assert_same(good, _reference(engine, [(6, audio, texts)])[0])
    assert free == engine.slots


def _delegate_episode(layout, feature_config):
    """The first rendered delegation episode whose result (request + DELAY) lands well inside it."""
    renderer = default_renderer()
    for seed in range(3_000_000, 3_000_100):
        ep = delegation.generate(seed, duration_s=6.0, renderer=renderer)
        if ep.metadata["variant"] == "delegate" and ep.metadata["request_time"] + DELAY + 1.0 < ep.duration:
            params = FeatureParams.from_config(feature_config)
            return ep, pack.EpisodeGrid.from_episode(ep, layout, ByteTokenizer(), params)
    raise AssertionError("no delegate episode among the seeds")


def test_delegation_events_reach_the_client(engine, monkeypatch):  # noqa: F811
    """A random-init model cannot delegate, so its text is teacher-forced from a delegation episode (the
    chunks the server builds get `force`); the real hub and tool backend run the request."""
    layout = engine.layout
    ep, grid = _delegate_episode(layout, engine.config.features)
    (req_time, req_text), = [(e.time, e.text) for e in ep.background if e.kind == "request"]
    next_chunk = serve.LiveSession.next_chunk

    def forced(ls):
        chunk = next_chunk(ls)
        if ls.fed - 1 < grid.num_turns:
            chunk.force = pack.pack_window(grid, ls.fed - 1, 1)
        return chunk

    monkeypatch.setattr(serve.LiveSession, "next_chunk", forced)
    hub = DelegationHub(BackgroundRunner(ToolBackend(), timeout_s=30), ByteTokenizer(), release_after_s=DELAY)
    srv = ThreadServer(engine, hub=hub, clock="step")
    try:
        res = asyncio.run(stream(srv.url, ep.user_audio, ep.sample_rate, seed=8, timeout_s=TIMEOUT,
                                 text_events=[(e.time, e.text) for e in ep.user_text]))
    finally:
        srv.stop()
    assert res.done is not None and res.close_code == 1000 and not res.errors, (res.errors, res.close_code)
    assert [c["event"] for c in res.controls] == ["delegation_requested", "delegation_result"], res.controls
    asked, answered = res.controls
    assert asked["request"] == req_text and req_time - layout.micro_turn_s < asked["time"] < req_time + 1.0
    assert answered["job_id"] == asked["job_id"] and answered["status"] == "done"
    assert answered["result"] == delegation.answer_request(req_text)
    assert answered["time"] == pytest.approx(asked["time"] + DELAY, abs=1e-6)
