"""The WebSocket server and the Python client on loopback: bitwise equal to the in-process
Scheduler in the step clock, concurrent sessions, capacity and disconnects, per-session errors,
the realtime clock never waiting for a client, and the CLI's bind check."""

import asyncio
import io
import json
import shutil
import socket
import subprocess
import sys
import threading

import aiohttp
import numpy as np
import pytest
from conftest import REPO, config_path
from flax import nnx

from interaction_jax.client import ClientError, stream, write_outputs
from interaction_jax.config_lib import load_config
from interaction_jax.data.episode import Episode, TextEvent, VideoFrame
from interaction_jax.eval.episodes import episode_chunks
from interaction_jax.inference.engine import StreamEngine
from interaction_jax.inference.session import Scheduler
from interaction_jax.model.interaction_model import InteractionModel
from interaction_jax.serve import (
    CLOSE_POLICY,
    CLOSE_TOO_BIG,
    CLOSE_TRY_AGAIN,
    ServeOptions,
    StreamServer,
    pcm16_decode,
    pcm16_encode,
    start,
    turn_audio,
    warm_up,
)

TIMEOUT = 240.0


@pytest.fixture(scope="module")
def engine():
    c = load_config(config_path("tiny.py"), ["inference.slots=3"])  # same compiled step as test_sessions
    eng = StreamEngine(c, InteractionModel(c, rngs=nnx.Rngs(0)))
    warm_up(eng)  # compile and run the first micro-turn's lazy imports here, not inside a test's deadline
    return eng


class ThreadServer:
    """A StreamServer on 127.0.0.1:<free port>, its event loop in a daemon thread."""

    def __init__(self, engine, hub=None, **options):
        self.server = StreamServer(engine, ServeOptions(**options), hub=hub)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.runner, self.port = asyncio.run_coroutine_threadsafe(start(self.server, "127.0.0.1", 0),
                                                                  self.loop).result(TIMEOUT)
        self.url = f"ws://127.0.0.1:{self.port}"

    def stop(self):
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(TIMEOUT)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)


@pytest.fixture
def step_server(engine):
    srv = ThreadServer(engine, clock="step")
    yield srv
    srv.stop()


def _audio(seconds: float, seed: int) -> np.ndarray:
    """A tone with noise, as the server will see it (through PCM16)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 16000)) / 16000
    x = 0.3 * np.sin(2 * np.pi * (180 + 200 * rng.random()) * t) + 0.02 * rng.standard_normal(t.size)
    return pcm16_decode(pcm16_encode(x))


def _reference(engine, sessions):
    """In-process Scheduler on the same chunks: [(tokens [T, slots], mel [T, ...], pcm bytes per turn)]."""
    sched = Scheduler(engine)
    opened = []
    for seed, audio, texts, *video in sessions:
        ep = Episode("ref", len(audio) / 16000, user_audio=audio, user_text=[TextEvent(m, t) for t, m in texts],
                     video=[VideoFrame(t, f) for t, f in (video[0] if video else [])])
        s = sched.open_session(seed=seed)
        for chunk in episode_chunks(ep, engine.layout):
            s.push(chunk)
        opened.append(s)
    sched.drain()
    n_iter = int(engine.config.inference.griffin_lim_iters)
    out = []
    for s in opened:
        pcm = [pcm16_encode(turn_audio(o.mel, engine.feature_params, n_iter)) for o in s.outputs]
        out.append((np.stack([o.text_tokens for o in s.outputs]), np.stack([o.mel for o in s.outputs]), pcm))
        s.close()
    return out


def _assert_same(res, ref):
    tokens, mel, pcm = ref
    assert res.done is not None and res.close_code == 1000, (res.errors, res.close_code)
    assert [m["turn"] for m in res.turns] == list(range(len(tokens)))
    np.testing.assert_array_equal(np.array([m["tokens"] for m in res.turns]), tokens)
    np.testing.assert_array_equal(np.stack([res.mel(i) for i in range(len(res.turns))]), mel)
    assert res.audio == pcm  # bitwise PCM16, turn by turn


def _png(frame: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="PNG")
    return buf.getvalue()


def test_client_equals_scheduler_bitwise(engine, step_server, tmp_path):
    audio, texts = _audio(0.9, 1), [(0.3, "hello there")]
    rng = np.random.default_rng(0)
    frames = [(0.1, rng.integers(0, 255, (80, 80, 3), dtype=np.uint8)),
              (0.5, rng.integers(0, 255, (96, 64, 3), dtype=np.uint8))]
    res = asyncio.run(stream(step_server.url, audio, text_events=texts, seed=7, return_mel=True, timeout_s=TIMEOUT,
                             video_events=[(t, _png(f)) for t, f in frames]))
    assert res.ready["version"] == 1 and res.ready["samples_per_chunk"] == 3200 and res.ready["seed"] == 7
    assert not res.errors
    _assert_same(res, _reference(engine, [(7, audio, texts, frames)])[0])
    assert res.done["summary"]["micro_turns"] == 5 and res.done["summary"]["underruns"] == 0
    summary = write_outputs(res, str(tmp_path))
    assert summary["micro_turns"] == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["events.json", "model.wav", "transcript.json"]


def test_two_clients_at_once(engine, step_server):
    a, b = (_audio(0.8, 2), []), (_audio(0.6, 3), [(0.1, "hi")])

    async def both():
        return await asyncio.gather(
            stream(step_server.url, a[0], text_events=a[1], seed=1, return_mel=True, timeout_s=TIMEOUT),
            stream(step_server.url, b[0], text_events=b[1], seed=2, return_mel=True, timeout_s=TIMEOUT))

    ra, rb = asyncio.run(both())
    ref = _reference(engine, [(1, *a), (2, *b)])
    _assert_same(ra, ref[0])
    _assert_same(rb, ref[1])


async def _hello(url, **fields):
    """Opens a raw socket and sends a hello; returns (http session, ws, first reply)."""
    http = aiohttp.ClientSession()
    ws = await http.ws_connect(url + "/ws")
    await ws.send_str(json.dumps({"type": "hello", "sample_rate": 16000, **fields}))
    msg = await ws.receive(timeout=30)
    return http, ws, json.loads(msg.data) if msg.type == aiohttp.WSMsgType.TEXT else None


async def _health(url):
    async with aiohttp.ClientSession() as http, http.get(url.replace("ws://", "http://") + "/healthz") as r:
        return await r.json()


def test_full_server_then_disconnect_frees_the_slot(step_server):
    url = step_server.url

    async def go():
        held = [await _hello(url) for _ in range(3)]
        assert all(r["type"] == "ready" for _, _, r in held)
        assert (await _health(url))["free"] == 0
        http, ws, reply = await _hello(url)
        assert reply["code"] == "server_full" and "try again later" in reply["message"]
        await ws.receive(timeout=30)
        assert ws.close_code == CLOSE_TRY_AGAIN
        await http.close()
        http0, ws0, _ = held[0]
        await ws0.close()  # a client leaving mid-session
        await http0.close()
        for _ in range(100):
            if (await _health(url))["free"] == 1:
                break
            await asyncio.sleep(0.05)
        assert (await _health(url))["free"] == 1
        http, ws, reply = await _hello(url)
        assert reply["type"] == "ready"
        for h, w, _ in [*held[1:], (http, ws, None)]:
            await w.close()
            await h.close()

    asyncio.run(go())


def test_bad_clients_get_errors_and_others_are_unaffected(engine, step_server):
    url = step_server.url
    audio, texts = _audio(0.6, 4), [(0.2, "ok")]

    async def bad(first, *then):
        http = aiohttp.ClientSession()
        ws = await http.ws_connect(url + "/ws")
        if isinstance(first, bytes):
            await ws.send_bytes(first)
        else:
            await ws.send_str(first)
        replies = []
        for m in then:
            await ws.send_bytes(m) if isinstance(m, bytes) else await ws.send_str(m)
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                replies.append(json.loads(msg.data))
                if replies[-1].get("type") == "ready" and not then:
                    await ws.close()
        await http.close()
        return replies, ws.close_code

    hello = json.dumps({"type": "hello", "sample_rate": 16000})

    async def go():
        good = stream(url, audio, text_events=texts, seed=3, return_mel=True, timeout_s=TIMEOUT)
        return await asyncio.gather(
            good,
            bad("{not json"),
            bad(b"\x00\xffgarbage"),
            bad(json.dumps({"type": "hello", "sample_rate": 11111})),
            bad(json.dumps({"type": "hello", "sample_rate": 16000, "format": "mp3"})),
            bad(json.dumps({"type": "hello", "version": 99})),
            bad(hello, b"\x00" * (step_server.server.options.max_frame_bytes + 2)),
            bad(hello, "garbage{", json.dumps({"type": "nope"}), json.dumps({"type": "end"})),
        )

    res, *bads = asyncio.run(go())
    _assert_same(res, _reference(engine, [(3, audio, texts)])[0])
    codes = [(r[-1]["code"] if r else None, c) for r, c in bads[:6]]
    assert codes[:5] == [("bad_hello", CLOSE_POLICY), ("bad_hello", CLOSE_POLICY), ("bad_sample_rate", CLOSE_POLICY),
                         ("bad_format", 1003), ("bad_version", CLOSE_POLICY)], codes
    assert codes[5] == ("frame_too_large", CLOSE_TOO_BIG)
    replies, close = bads[6]  # malformed messages mid-session: errors, the session goes on to a clean end
    assert [r["type"] for r in replies] == ["ready", "error", "error", "done"] and close == 1000
    assert [r["code"] for r in replies[1:3]] == ["bad_message", "bad_message"]
    assert not any(r["fatal"] for r in replies[1:3])


def test_realtime_clock_never_waits_for_a_client(engine):
    srv = ThreadServer(engine, clock="realtime", jitter_turns=0, max_buffer_s=0.4)

    async def go():
        http, ws, ready = await _hello(srv.url)
        assert ready["type"] == "ready" and ready["clock"] == "realtime"
        turns = []
        while len(turns) < 2:  # nothing sent: the clock feeds silence and counts it
            msg = await ws.receive(timeout=60)
            if msg.type == aiohttp.WSMsgType.TEXT and json.loads(msg.data)["type"] == "turn":
                turns.append(json.loads(msg.data))
        await ws.send_bytes(pcm16_encode(np.zeros(16000, np.float32)))  # 1 s at once > 0.4 s of buffer
        warning = None
        while warning is None:
            msg = await ws.receive(timeout=60)
            if msg.type == aiohttp.WSMsgType.TEXT and json.loads(msg.data)["type"] == "warning":
                warning = json.loads(msg.data)
        await ws.close()
        await http.close()
        return turns, warning

    try:
        turns, warning = asyncio.run(go())
    finally:
        srv.stop()
    assert turns[1]["stats"]["underruns"] == 2 and turns[0]["turn"] == 0
    assert warning["code"] == "buffer_full"


def test_token_required_when_set(engine):
    srv = ThreadServer(engine, clock="step", token="s3cret")
    try:
        with pytest.raises(ClientError, match="401"):
            asyncio.run(stream(srv.url, np.zeros(3200, np.float32), timeout_s=30))

        async def ok():
            async with aiohttp.ClientSession() as http, http.ws_connect(
                    srv.url + "/ws", headers={"Authorization": "Bearer s3cret"}) as ws:
                await ws.send_str(json.dumps({"type": "hello"}))
                return json.loads((await ws.receive(timeout=30)).data)

        assert asyncio.run(ok())["type"] == "ready"
    finally:
        srv.stop()


def test_cli_refuses_a_public_host_without_token():
    r = subprocess.run([sys.executable, "-m", "interaction_jax.serve", f"--config={config_path('tiny.py')}",
                        "--init=random", "--host=0.0.0.0"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "--token" in r.stderr and "--insecure" in r.stderr


def _chromium():
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


async def _page_state(devtools_port: int, page_port: int, done, timeout_s: float, actions=()) -> dict:
    """Polls `window.state` of the served page through the DevTools protocol until `done(state)`.

    `actions` [(when(state), js_expression)]: each expression is evaluated once, at the first poll where
    `when` holds (e.g. typing a message once the session is live)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    pending = list(actions)
    async with aiohttp.ClientSession() as http:
        target = None
        while target is None:
            assert loop.time() < deadline, "chromium never opened the page"
            try:
                async with http.get(f"http://127.0.0.1:{devtools_port}/json") as r:
                    pages = await r.json()
                target = next((p for p in pages if p.get("type") == "page" and f":{page_port}/" in p.get("url", "")),
                              None)
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.5)
        async with http.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0) as ws:
            n = 0

            async def evaluate(expression: str):
                nonlocal n
                n += 1
                await ws.send_str(json.dumps({"id": n, "method": "Runtime.evaluate", "params": {
                    "expression": expression, "returnByValue": True}}))
                reply = {}
                while reply.get("id") != n:  # a loaded machine can be slow; the overall deadline bounds the wait
                    reply = json.loads((await ws.receive(timeout=max(1.0, deadline - loop.time()))).data)
                return reply["result"]["result"].get("value")

            state = {}
            while loop.time() < deadline:
                try:
                    state = json.loads(await evaluate("JSON.stringify(window.state || null)") or "null") or {}
                    for action in [a for a in pending if a[0](state)]:
                        pending.remove(action)
                        await evaluate(action[1])
                except asyncio.TimeoutError:
                    break
                if done(state) and not pending:
                    return state
                await asyncio.sleep(0.5)
            return state


class ServerRecord:
    """What the server received and sent, recorded at LiveSession's methods (the page test's reference)."""

    def __init__(self, monkeypatch):
        self.received: list[np.ndarray] = []  # decoded audio frames, in arrival order
        self.texts: list[tuple[str, int, int]] = []  # (text, micro-turn it went into, underruns so far)
        self.video_turns: list[tuple[int, int]] = []  # (micro-turn it went into, underruns so far)
        self.chunks: list[tuple[np.ndarray, int]] = []  # (audio fed, underruns so far incl. this one)
        self.sent: list[dict] = []  # JSON messages sent
        self.turn_audio: dict[int, np.ndarray] = {}
        from interaction_jax import serve

        cls = serve.LiveSession
        add_audio, add_text, add_video, next_chunk = cls.add_audio, cls.add_text, cls.add_video, cls.next_chunk
        send_json, send_turn = cls.send_json, serve.StreamServer._send_turn

        def rec_audio(ls, data):
            self.received.append(pcm16_decode(data))
            return add_audio(ls, data)

        def rec_text(ls, text):
            self.texts.append((text, ls.stream_turn(), ls.stats["underruns"]))
            return add_text(ls, text)

        def rec_video(ls, data):
            self.video_turns.append((ls.stream_turn(), ls.stats["underruns"]))
            return add_video(ls, data)

        def rec_chunk(ls):
            chunk = next_chunk(ls)
            self.chunks.append((chunk.audio, ls.stats["underruns"]))
            return chunk

        def rec_send(ls, obj):
            self.sent.append(obj)
            return send_json(ls, obj)

        def rec_turn(srv, ls, o, pcm, *rest):
            self.turn_audio[o.turn] = pcm16_decode(pcm)
            return send_turn(srv, ls, o, pcm, *rest)

        for name, f in (("add_audio", rec_audio), ("add_text", rec_text), ("add_video", rec_video),
                        ("next_chunk", rec_chunk), ("send_json", rec_send)):
            monkeypatch.setattr(cls, name, f)
        monkeypatch.setattr(serve.StreamServer, "_send_turn", rec_turn)


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if len(x) else 0.0


@pytest.mark.skipif(_chromium() is None, reason="needs chromium (Debian package 'chromium')")
def test_browser_page_streams_the_microphone_and_plays_the_model(engine, tmp_path, monkeypatch):
    """Fake microphone (a wav file) and fake camera; the page's transcript, timeline and camera frames
    are checked against what the server received and sent."""
    from interaction_jax.features.audio import save_wav

    wav = tmp_path / "mic.wav"
    save_wav(wav, _audio(3.0, 5), 16000)
    record = ServerRecord(monkeypatch)
    # Slack for a loaded machine: 3 micro-turns of jitter buffer, and room for all the audio a slow clock has not
    # fed yet (dropped audio would move the server's stream position away from the page's).
    srv = ThreadServer(engine, clock="realtime", jitter_turns=3, max_buffer_s=600.0)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        devtools = s.getsockname()[1]
    proc = subprocess.Popen([_chromium(), "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                             "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                             f"--use-file-for-fake-audio-capture={wav}", "--autoplay-policy=no-user-gesture-required",
                             f"--remote-debugging-port={devtools}", "--remote-allow-origins=*",
                             f"--user-data-dir={tmp_path / 'profile'}",
                             f"http://127.0.0.1:{srv.port}/?autostart=1&camera=1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    typed = "hello model"
    try:
        state = asyncio.run(_page_state(
            devtools, srv.port, lambda s: len(s.get("timeline", [])) >= 8 and s.get("videoFrames", 0) >= 4,
            timeout_s=TIMEOUT, actions=[(lambda s: s.get("turns", 0) >= 2, f"sendText({json.dumps(typed)})")]))
    finally:
        proc.terminate()
        proc.wait(30)
        srv.stop()
    ready = state.get("ready")
    assert ready and ready["sample_rate"] == 16000 and ready["video_patches"] == engine.layout.video_patches, state
    assert state["turns"] >= 5 and state["audioBytes"] > 0 and state["sentSamples"] > 0, state
    assert not [e for e in state["errors"] if e.get("code") != "buffer_full"], state["errors"]
    T, S = ready["micro_turn_s"], ready["samples_per_chunk"]

    # Camera: one JPEG per micro-turn of sent audio, in the micro-turn the page computed (while no audio was late).
    assert state["camera"] == "on" and state["videoFrames"] >= 4 and len(record.video_turns) >= state["videoFrames"]
    page_turns = state["videoTurns"]
    assert all(b > a for a, b in zip(page_turns, page_turns[1:])), page_turns
    server_turns = [t for t, _ in record.video_turns]
    assert all(b > a for a, b in zip(server_turns, server_turns[1:])), server_turns
    on_time = [(t, p) for (t, late), p in zip(record.video_turns, page_turns) if late == 0]
    assert len(on_time) >= 3 and all(t == p for t, p in on_time), on_time

    # Transcript, user side: the typed text at the micro-turn the server put it in.
    (text, turn, underruns), = record.texts
    user = [e for e in state["transcript"] if e["side"] == "user"]
    assert text == typed and [e["text"] for e in user] == [typed]
    if underruns == 0:  # the page's stream position equals the server's while no audio was late
        assert user[0]["time"] == pytest.approx(turn * T)
    assert {"time": user[0]["time"], "kind": "user", "text": typed} in state["marks"]
    # Transcript, model side: every word the server sent, in order, joined into lines.
    sent_words = [w for m in record.sent if m.get("type") in ("turn", "words") for w in m["words"]]
    page_words = state["words"]
    assert page_words == sent_words[: len(page_words)]
    model_lines = " ".join(e["text"] for e in state["transcript"] if e["side"] == "model")
    assert model_lines == " ".join(w["text"] for w in page_words)
    assert sum(m["kind"] == "word" for m in state["marks"]) == len(page_words)

    # Timeline: one entry per micro-turn; model energy = the RMS of that turn's audio as the server sent it,
    # user energy = the RMS of the chunk the server fed for that turn (where no audio was late).
    timeline = state["timeline"]
    assert [e["turn"] for e in timeline] == list(range(len(timeline)))
    for e in timeline:
        assert e["modelRms"] == pytest.approx(_rms(record.turn_audio[e["turn"]]), abs=1e-5)
        assert e["modelSpeaking"] == (e["modelRms"] > 0.01)
    on_time = [e for e in timeline if e["turn"] < len(record.chunks) and record.chunks[e["turn"]][1] == 0
               and len(np.concatenate(record.received)) >= (e["turn"] + 1) * S]
    assert len(on_time) >= 3, (len(on_time), [c[1] for c in record.chunks])
    for e in on_time:
        assert e["userRms"] == pytest.approx(_rms(record.chunks[e["turn"]][0]), abs=1e-5)
    assert max(e["userRms"] for e in on_time) > 0.05  # the fake microphone's tone reached the server


class ScriptedHeard:
    """The engine, with every slot's heard tokens replaced by a script ("hi " in micro-turn 2,
    "there " over micro-turns 4-5): a random model writes no words, a trained one is not at hand."""

    def __init__(self, engine):
        from interaction_jax.streams.tokenizer import ByteTokenizer, Control

        self._engine, tok, n = engine, ByteTokenizer(), int(Control.NOTHING)
        A = engine.layout.audio_positions
        pad = lambda ids: (ids + [n] * A)[:A]  # noqa: E731
        self.script = {2: pad(tok.encode("hi ")), 4: pad(tok.encode("ther")), 5: pad(tok.encode("e "))}

    def __getattr__(self, name):
        return getattr(self._engine, name)

    def step(self, inputs):
        out = self._engine.step(inputs)
        turn = int(out["turn"][np.flatnonzero(inputs["active"])[0]])
        row = self.script.get(turn, [1] * out["heard_tokens"].shape[1])
        return dict(out, heard_tokens=np.tile(np.asarray(row, np.int32), (len(out["heard_tokens"]), 1)))


def test_heard_transcript_is_sent_as_the_session_decodes_it(engine):
    """A server whose model writes a user transcript sends it: ready.heard_transcript, and the turn
    messages' "heard" words, here "hi" (written in micro-turn 2) and "there" (finished in 5)."""
    scripted = ScriptedHeard(engine)
    srv = ThreadServer(scripted, clock="step")
    srv.server.heard_transcript = True  # as for a config with model.user_speech_loss_weight > 0
    try:
        res = asyncio.run(stream(srv.url, _audio(1.4, 5), seed=3, timeout_s=TIMEOUT))
    finally:
        srv.stop()
    T = engine.layout.micro_turn_s
    assert res.ready["heard_transcript"] is True and not res.errors
    assert [(w["text"], round(w["time"], 6)) for w in res.heard] == [("hi", round(2 * T, 6)),
                                                                     ("there", round(5 * T, 6))]
    sent_in = {w["text"]: m["turn"] for m in res.turns for w in m["heard"]}
    assert sent_in == {"hi": 2, "there": 5}  # each word in the turn message of the micro-turn that finished it


def test_heard_transcript_off_for_a_model_not_trained_to_write_it(engine, step_server):
    res = asyncio.run(stream(step_server.url, _audio(0.6, 6), seed=1, timeout_s=TIMEOUT))
    assert res.ready["heard_transcript"] is False
    assert all(m["heard"] == [] for m in res.turns) and res.heard == []
