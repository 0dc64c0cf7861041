"""The server's internal-error path (close code 1011): a failure inside one session closes that
session alone, with an `internal` error; the other sessions of the same ticks go on bitwise as
if it had never been there, and a failed engine step never takes the server down."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest
from test_serve import TIMEOUT, ThreadServer, _assert_same, _audio, _reference, engine  # noqa: F401 - fixture

from interaction_jax.inference.session import Session
from interaction_jax.serve import CLOSE_INTERNAL, pcm16_encode

FAILING_SEED = 666


@pytest.fixture
def step_server(engine):  # noqa: F811 - the engine fixture imported above
    srv = ThreadServer(engine, clock="step")
    yield srv
    srv.stop()


async def _raw_session(url: str, seed: int, seconds: float) -> tuple[list[dict], int | None]:
    """A session that sends all its audio at once, then `end`; (text replies, close code)."""
    async with aiohttp.ClientSession() as http, http.ws_connect(url + "/ws") as ws:
        await ws.send_str(json.dumps({"type": "hello", "sample_rate": 16000, "seed": seed}))
        await ws.send_bytes(pcm16_encode(_audio(seconds, seed)))
        await ws.send_str(json.dumps({"type": "end"}))
        replies = [json.loads(m.data) async for m in ws if m.type == aiohttp.WSMsgType.TEXT]
        return replies, ws.close_code


def test_one_session_failing_inside_a_tick_is_closed_alone_with_1011(engine, step_server, monkeypatch):  # noqa: F811
    fill, calls = Session.fill_inputs, {}

    def failing_fill(self, inputs, chunk):
        if self.seed == FAILING_SEED:
            calls[self.id] = calls.get(self.id, 0) + 1
            if calls[self.id] == 2:  # its second micro-turn: a bug inside this session only
                raise RuntimeError("injected failure in one session")
        return fill(self, inputs, chunk)

    monkeypatch.setattr(Session, "fill_inputs", failing_fill)
    from interaction_jax.client import stream

    audio, texts = _audio(0.8, 5), [(0.2, "still here")]

    async def go():
        return await asyncio.gather(
            stream(step_server.url, audio, text_events=texts, seed=3, return_mel=True, timeout_s=TIMEOUT),
            _raw_session(step_server.url, FAILING_SEED, 0.8),
        )

    good, (replies, code) = asyncio.run(go())
    assert code == CLOSE_INTERNAL, replies
    assert [r["type"] for r in replies] == ["ready", "turn", "error"], replies
    err = replies[-1]
    assert err["code"] == "internal" and err["fatal"] and "injected failure in one session" in err["message"]
    _assert_same(good, _reference(engine, [(3, audio, texts)])[0])  # bitwise, as if alone; closed with 1000
    assert not good.errors


def test_a_failed_engine_step_closes_its_sessions_with_1011_and_the_server_goes_on(engine, step_server, monkeypatch):  # noqa: F811
    step, failed = engine.step, []

    def step_once_failing(inputs):
        if not failed:
            failed.append(True)
            raise RuntimeError("injected engine failure")
        return step(inputs)

    monkeypatch.setattr(engine, "step", step_once_failing)
    replies, code = asyncio.run(_raw_session(step_server.url, 11, 0.4))
    assert code == CLOSE_INTERNAL and replies[-1]["code"] == "internal", replies
    assert "engine step failed" in replies[-1]["message"]
    from interaction_jax.client import stream

    audio = _audio(0.4, 12)
    res = asyncio.run(stream(step_server.url, audio, seed=4, return_mel=True, timeout_s=TIMEOUT))
    _assert_same(res, _reference(engine, [(4, audio, [])])[0])
