"""Live sessions over WebSocket: `python -m interaction_jax.serve` (protocol: docs/serving.md).

    python -m interaction_jax.serve --workdir=runs/tiny [--config=configs/tiny.py] [--init=random]
        [--host=127.0.0.1] [--port=8998] [--token=SECRET | --insecure] [--clock=realtime|step]

One process holds one `StreamEngine` (`inference.slots` = most concurrent sessions) and one
`Scheduler`, and owns the micro-turn clock. In `realtime` mode it ticks every micro-turn of wall
time; every session that has started gets exactly one micro-turn per tick, from its jitter
buffer, or silence when its audio has not arrived (counted, never waited for). In `step` mode
(tests, offline runs) a tick happens when every open session has delivered its next chunk (or
ended), so results do not depend on timing and equal the in-process `Scheduler` bitwise.

The engine step and the vocoder run in one worker thread; the event loop keeps receiving audio
meanwhile. Opening and closing sessions (engine.reset, slot bookkeeping) happen only between
ticks, under one asyncio lock. Outgoing messages go through a bounded per-session queue, so a
client that stops reading is closed instead of stalling the clock.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import concurrent.futures
import dataclasses
import hmac
import io
import json
import logging
import math
import time
from typing import Any

import numpy as np

PROTOCOL_VERSION = 1
FORMATS = ("pcm16", "f32")
CLOCKS = ("realtime", "step")
LOOPBACK = ("127.0.0.1", "localhost", "::1")

# WebSocket close codes (RFC 6455 / IANA registry) the server uses.
CLOSE_NORMAL = 1000  # session ended (client "end", session length limit)
CLOSE_GOING_AWAY = 1001  # the server is shutting down
CLOSE_UNSUPPORTED = 1003  # audio format the server does not take
CLOSE_POLICY = 1008  # protocol violation: bad hello, message rate, a client that stops reading
CLOSE_TOO_BIG = 1009  # a frame over max_frame_bytes
CLOSE_INTERNAL = 1011  # the engine step failed
CLOSE_TRY_AGAIN = 1013  # every slot is taken: try again later


@dataclasses.dataclass
class ServeOptions:
    """Server limits and clock (the CLI flags; docs/serving.md explains each)."""

    clock: str = "realtime"
    jitter_turns: int = 1  # micro-turns of audio buffered before a session's first tick (realtime)
    max_buffer_s: float = 10.0  # audio a client may send ahead of the clock; the excess is dropped and reported
    max_frame_bytes: int = 1 << 20
    max_messages_per_s: float = 200.0  # token bucket, burst of one second's worth
    max_session_s: float = 600.0
    max_text_chars: int = 2000
    max_metadata_bytes: int = 4096
    hello_timeout_s: float = 10.0
    send_queue: int = 512  # outgoing messages queued per session before it counts as not reading
    token: str | None = None
    griffin_lim_iters: int | None = None  # None = config.inference.griffin_lim_iters

    def __post_init__(self):
        if self.clock not in CLOCKS:
            raise ValueError(f"clock must be one of {CLOCKS}, got {self.clock!r}")
        if self.jitter_turns < 0:
            raise ValueError(f"jitter_turns must be >= 0, got {self.jitter_turns}")


class ProtocolError(Exception):
    """A client message the server refuses; `fatal` ones close the session with `close_code`."""

    def __init__(self, code: str, message: str, *, fatal: bool = False, close_code: int = CLOSE_POLICY):
        super().__init__(message)
        self.code, self.message, self.fatal, self.close_code = code, message, fatal, close_code


def pcm16_encode(audio: np.ndarray) -> bytes:
    """float [-1, 1] -> little-endian int16 bytes (what the client sends and the server returns)."""
    x = np.clip(np.asarray(audio, np.float32), -1.0, 1.0)
    return np.round(x * 32767.0).astype("<i2").tobytes()


def pcm16_decode(data: bytes) -> np.ndarray:
    """Little-endian int16 bytes -> float32 in [-1, 1)."""
    return np.frombuffer(data, "<i2").astype(np.float32) / np.float32(32768.0)


def turn_audio(mel: np.ndarray, feature_params, n_iter: int) -> np.ndarray:
    """One micro-turn's model audio at the model rate: Griffin-Lim of its own mel frames.

    Each micro-turn is vocoded on its own (no look-ahead, so it can play at once); the in-process
    reference for tests is this same function on the `Scheduler`'s mel.
    """
    return turns_audio([mel], feature_params, n_iter)[0]


def turns_audio(mels: list[np.ndarray], feature_params, n_iter: int) -> list[np.ndarray]:
    """`turn_audio` of several sessions' micro-turns, vocoded together (one batch per tick)."""
    from interaction_jax.features.mel import mel_to_audio

    if not mels:
        return []
    frames = np.stack([np.asarray(m, np.float32).reshape(-1, np.asarray(m).shape[-1]) for m in mels])
    return list(mel_to_audio(frames, feature_params, n_iter=n_iter,
                             length=frames.shape[1] * feature_params.hop_length))


def _rate(value: Any, name: str, micro_turn_s: float) -> int:
    """A sample rate that divides the micro-turn into whole samples (else chunks would drift)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
        raise ProtocolError("bad_sample_rate", f"{name} must be an integer in Hz, got {value!r}", fatal=True)
    rate = int(value)
    samples = rate * micro_turn_s
    if not 8000 <= rate <= 192000 or abs(samples - round(samples)) > 1e-6:
        raise ProtocolError(
            "bad_sample_rate",
            f"{name}={rate}: must be in [8000, 192000] Hz and give whole samples per "
            f"{micro_turn_s * 1000:.0f} ms micro-turn (e.g. 16000, 24000, 44100, 48000)",
            fatal=True,
        )
    return rate


class LiveSession:
    """One connection's state between the socket and its `Session` (buffers, counters, send queue)."""

    def __init__(self, server: StreamServer, ws, hello: dict):
        self.server, self.ws, self.hello_opts = server, ws, hello
        layout = server.layout
        self.rate = hello["sample_rate"]
        self.format = hello["format"]
        self.out_rate = hello["output_sample_rate"]
        self.return_mel = hello["return_mel"]
        self.S = int(round(layout.micro_turn_s * self.rate))
        self.max_buffer = int(server.options.max_buffer_s * self.rate)
        self.session = None  # set once a slot is taken
        self.buf = np.zeros(0, np.float32)
        self._odd = b""  # a trailing byte of a pcm16 frame split mid-sample
        self.texts: dict[int, list[str]] = collections.defaultdict(list)
        self.video: dict[int, np.ndarray] = {}
        self.fed = 0  # micro-turns pushed
        self.start_time = 0.0  # loop time of its first tick (realtime)
        self.ended = False
        self.finished = False
        self.words_sent = 0
        self.heard_sent = 0
        self.events_sent = 0
        self.delegations_sent = 0
        self.results_sent: set[int] = set()
        self.stats = collections.Counter()
        self.step_ms: list[float] = []
        self.queue: asyncio.Queue = asyncio.Queue(maxsize=server.options.send_queue)
        self._tokens = float(server.options.max_messages_per_s)
        self._refill = time.monotonic()
        self._resampler = None

    # ---- input side (event loop) -------------------------------------------------------------
    def rate_limit(self) -> None:
        """Token bucket over every client message (burst = one second's allowance)."""
        cap = float(self.server.options.max_messages_per_s)
        now = time.monotonic()
        self._tokens = min(cap, self._tokens + (now - self._refill) * cap)
        self._refill = now
        if self._tokens < 1.0:
            raise ProtocolError("rate_limited", f"more than {cap:g} messages per second", fatal=True)
        self._tokens -= 1.0

    def add_audio(self, data: bytes) -> None:
        if self.ended:
            raise ProtocolError("ended", "audio after 'end' is ignored")
        if self.format == "pcm16":
            data = self._odd + data
            n = len(data) // 2 * 2
            self._odd = data[n:]
            x = pcm16_decode(data[:n])
        else:
            if len(data) % 4:
                raise ProtocolError("bad_audio", f"f32 frames must hold whole 4-byte samples, got {len(data)} bytes")
            x = np.frombuffer(data, "<f4").astype(np.float32)
            if not np.isfinite(x).all():
                raise ProtocolError("bad_audio", "f32 audio frame contains NaN or inf; frame dropped")
        room = self.max_buffer - len(self.buf)
        if len(x) > room:
            self.stats["overflow_samples"] += len(x) - max(room, 0)
            x = x[: max(room, 0)]
            self.send_json({"type": "warning", "code": "buffer_full",
                            "message": f"audio more than {self.server.options.max_buffer_s:g} s ahead of the clock "
                                       "was dropped; send at real time"})
        if len(x):
            self.buf = np.concatenate([self.buf, x])
        self.server.wake()

    def stream_turn(self) -> int:
        """The micro-turn the next received audio sample lands in (typed text and video go there)."""
        return self.fed + len(self.buf) // self.S

    def add_text(self, text: Any) -> None:
        if not isinstance(text, str) or not text.strip():
            raise ProtocolError("bad_text", "'text' must be a non-empty string")
        if len(text) > self.server.options.max_text_chars:
            raise ProtocolError("bad_text", f"text longer than {self.server.options.max_text_chars} characters")
        self.texts[self.stream_turn()].append(text)
        self.server.wake()

    def add_video(self, data: Any) -> None:
        from PIL import Image

        try:
            raw = base64.b64decode(data, validate=True)
            if len(raw) > self.server.options.max_frame_bytes:
                raise ValueError("frame too large")
            frame = np.asarray(Image.open(io.BytesIO(raw)).convert("RGB"), np.uint8)
        except Exception as e:  # any undecodable image is this client's error only
            raise ProtocolError("bad_video", f"'video' must be base64 JPEG/PNG bytes ({type(e).__name__}: {e})") from e
        self.video[self.stream_turn()] = frame  # the last frame of a micro-turn wins, as in training

    # ---- clock side --------------------------------------------------------------------------
    def has_chunk(self) -> bool:
        """Step clock: the next micro-turn's input is complete (or the client ended)."""
        return len(self.buf) >= self.S or self.ended

    def drained(self) -> bool:
        """Ended and nothing left to feed."""
        return self.ended and not len(self.buf) and not any(t >= self.fed for t in (*self.texts, *self.video))

    def next_chunk(self):
        """The next micro-turn's Chunk: buffered audio, silence for what has not arrived (counted)."""
        from interaction_jax.inference.session import Chunk

        take = min(self.S, len(self.buf))
        audio, self.buf = self.buf[:take], self.buf[take:]
        if take < self.S:
            if not self.ended:
                self.stats["underruns"] += 1
                self.stats["missing_samples"] += self.S - take
            audio = np.pad(audio, (0, self.S - take))
        t = self.fed
        late = [k for k in self.texts if k <= t]
        texts = [m for k in sorted(late) for m in self.texts.pop(k)]
        frames = [self.video.pop(k) for k in sorted(k for k in self.video if k <= t)]
        self.fed += 1
        return Chunk(audio=audio, sample_rate=self.rate, text=texts or None, video=frames[-1] if frames else None)

    def resample_out(self, audio: np.ndarray) -> np.ndarray:
        model_rate = self.server.feature_params.sample_rate
        if self.out_rate == model_rate:
            return audio
        if self._resampler is None:
            import soxr

            self._resampler = soxr.ResampleStream(model_rate, self.out_rate, 1, dtype="float32", quality="HQ")
        return self._resampler.resample_chunk(audio.astype(np.float32)).astype(np.float32)

    # ---- output side -------------------------------------------------------------------------
    def _put(self, item) -> None:
        if self.finished and item[0] != "close":
            return
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            self.finished = True
            self.server.release(self)
            self.queue = asyncio.Queue()  # drop the backlog: the client is not reading
            self.queue.put_nowait(("json", {"type": "error", "code": "not_reading",
                                            "message": "the client did not read the server's messages"}))
            self.queue.put_nowait(("close", CLOSE_POLICY, "not reading"))

    def send_json(self, obj: dict) -> None:
        self._put(("json", obj))

    def send_bytes(self, data: bytes) -> None:
        self._put(("bytes", data))

    def close(self, code: int, message: str) -> None:
        self._put(("close", code, message))
        self.finished = True

    async def sender(self) -> None:
        """Writes queued messages to the socket in order; the clock never awaits a client."""
        try:
            while True:
                item = await self.queue.get()
                if item[0] == "json":
                    await self.ws.send_str(json.dumps(item[1]))
                elif item[0] == "bytes":
                    await self.ws.send_bytes(item[1])
                else:
                    await self.ws.close(code=item[1], message=item[2].encode()[:120])
                    return
        except (ConnectionError, RuntimeError):
            return

    def summary(self) -> dict:
        lat = np.array(self.step_ms or [0.0])
        return {"micro_turns": self.fed, "underruns": self.stats["underruns"],
                "missing_samples": self.stats["missing_samples"], "overflow_samples": self.stats["overflow_samples"],
                "missed_deadlines": self.stats["missed_deadlines"],
                "step_ms": {"median": float(np.median(lat)), "p99": float(np.percentile(lat, 99))}}


class StreamServer:
    """The engine, the scheduler, the clock and the aiohttp app around them."""

    def __init__(self, engine, options: ServeOptions | None = None, *, hub=None):
        from interaction_jax.inference.session import Scheduler

        self.engine, self.options = engine, options or ServeOptions()
        self.layout, self.feature_params = engine.layout, engine.feature_params
        self.scheduler = Scheduler(engine, hub=hub)
        self.tokenizer = self.scheduler.tokenizer
        # the model's own transcript of the user ("heard" in turn messages), from a model trained to write it
        self.heard_transcript = float(engine.config.model.get("user_speech_loss_weight", 0.0)) > 0.0
        self.live: dict[str, LiveSession] = {}
        self.n_iter = int(self.options.griffin_lim_iters or engine.config.inference.griffin_lim_iters)
        self.max_turns = max(1, math.ceil(self.options.max_session_s / self.layout.micro_turn_s - 1e-9))
        self.ticks = 0
        self.missed_deadlines = 0
        self._lock: asyncio.Lock | None = None
        self._wake: asyncio.Event | None = None
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="engine")
        self._clock_task = None
        self._ids = 0

    # ---- app ---------------------------------------------------------------------------------
    def make_app(self):
        """The aiohttp application: `/` (page), `/ws` (sessions), `/healthz` (slots)."""
        from aiohttp import web

        app = web.Application()
        app.router.add_get("/", self._index)
        app.router.add_get("/ws", self._ws)
        app.router.add_get("/healthz", self._health)
        app.on_startup.append(self._on_startup)
        app.on_shutdown.append(self._on_shutdown)
        app.on_cleanup.append(self._on_cleanup)
        return app

    async def _on_startup(self, app) -> None:
        self._lock, self._wake = asyncio.Lock(), asyncio.Event()
        self._clock_task = asyncio.create_task(self._clock())

    async def _on_shutdown(self, app) -> None:
        """Closes open sessions (1001 going away) so shutdown never waits on a client."""
        for ls in list(self.live.values()):
            ls.finished = True
            if not ls.ws.closed:
                await ls.ws.close(code=CLOSE_GOING_AWAY, message=b"server shutdown")

    async def _on_cleanup(self, app) -> None:
        if self._clock_task is not None:
            self._clock_task.cancel()
            try:
                await self._clock_task
            except asyncio.CancelledError:
                pass
        self._pool.shutdown(wait=True)

    def wake(self) -> None:
        if self._wake is not None:
            self._wake.set()

    def _authorized(self, request) -> bool:
        token = self.options.token
        if not token:
            return True
        got = request.headers.get("Authorization", "")
        got = got[7:] if got.startswith("Bearer ") else request.query.get("token", "")
        return hmac.compare_digest(got.encode(), token.encode())

    async def _index(self, request):
        from aiohttp import web

        return web.Response(text=_page(), content_type="text/html")

    async def _health(self, request):
        from aiohttp import web

        if not self._authorized(request):
            return web.json_response({"error": "unauthorized"}, status=401)
        return web.json_response({"version": PROTOCOL_VERSION, "slots": self.engine.slots,
                                  "free": self.engine.slots - len(self.scheduler.sessions),
                                  "ticks": self.ticks, "missed_deadlines": self.missed_deadlines,
                                  "clock": self.options.clock})

    # ---- hello -------------------------------------------------------------------------------
    def parse_hello(self, text: str) -> dict:
        """Validates the first message (docs/serving.md, "hello"); raises a fatal ProtocolError."""
        try:
            msg = json.loads(text)
        except ValueError as e:
            raise ProtocolError("bad_hello", f"hello is not JSON ({e})", fatal=True) from e
        if not isinstance(msg, dict) or msg.get("type") != "hello":
            raise ProtocolError("bad_hello", "the first message must be a JSON object with type 'hello'", fatal=True)
        version = msg.get("version", PROTOCOL_VERSION)
        if version != PROTOCOL_VERSION:
            raise ProtocolError("bad_version", f"protocol version {version!r} not supported; this server speaks "
                                f"version {PROTOCOL_VERSION}", fatal=True)
        T = self.layout.micro_turn_s
        fmt = msg.get("format", "pcm16")
        if fmt not in FORMATS:
            raise ProtocolError("bad_format", f"format {fmt!r}: expected one of {list(FORMATS)}", fatal=True,
                                close_code=CLOSE_UNSUPPORTED)
        out = {"sample_rate": _rate(msg.get("sample_rate", 16000), "sample_rate", T), "format": fmt,
               "output_sample_rate": _rate(msg.get("output_sample_rate", 16000), "output_sample_rate", T),
               "return_mel": bool(msg.get("return_mel", False))}
        for key, lo, hi in (("temperature", 0.0, 10.0), ("top_p", 1e-6, 1.0)):
            v = msg.get(key)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int | float) or not lo <= v <= hi):
                raise ProtocolError("bad_hello", f"{key} must be a number in [{lo:g}, {hi:g}], got {v!r}", fatal=True)
            out[key] = None if v is None else float(v)
        seed = msg.get("seed")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**31):
            raise ProtocolError("bad_hello", f"seed must be an integer in [0, 2^31), got {seed!r}", fatal=True)
        out["seed"] = seed
        meta = msg.get("metadata", {})
        if not isinstance(meta, dict) or len(json.dumps(meta)) > self.options.max_metadata_bytes:
            raise ProtocolError("bad_hello", f"metadata must be a JSON object under {self.options.max_metadata_bytes} "
                                "bytes", fatal=True)
        out["metadata"] = meta
        return out

    def ready_message(self, ls: LiveSession) -> dict:
        s, lay = ls.session, self.layout
        inf = self.engine.config.inference
        return {"type": "ready", "version": PROTOCOL_VERSION, "session_id": s.id, "slot": s.slot, "seed": s.seed,
                "micro_turn_s": lay.micro_turn_s, "samples_per_chunk": ls.S, "sample_rate": ls.rate,
                "format": ls.format, "output_sample_rate": ls.out_rate,
                "model_sample_rate": int(self.feature_params.sample_rate),
                "output_delay_s": lay.output_window(0)[0], "text_slots": lay.model_text_slots,
                "video_patches": lay.video_patches, "video_frame_size": lay.video_frame_size,
                "clock": self.options.clock, "jitter_turns": self.options.jitter_turns,
                "max_buffer_s": self.options.max_buffer_s, "max_frame_bytes": self.options.max_frame_bytes,
                "max_messages_per_s": self.options.max_messages_per_s, "max_session_s": self.options.max_session_s,
                "temperature": float(inf.temperature if ls.hello_opts["temperature"] is None
                                     else ls.hello_opts["temperature"]),
                "top_p": float(inf.top_p if ls.hello_opts["top_p"] is None else ls.hello_opts["top_p"]),
                "heard_transcript": self.heard_transcript}

    # ---- a connection ------------------------------------------------------------------------
    async def _ws(self, request):
        from aiohttp import WSMsgType, web

        if not self._authorized(request):
            return web.json_response({"error": "unauthorized: send 'Authorization: Bearer TOKEN' or ?token="},
                                     status=401)
        opts = self.options
        ws = web.WebSocketResponse(max_msg_size=2 * opts.max_frame_bytes, heartbeat=30.0)
        await ws.prepare(request)
        ls = None
        sender = None
        try:
            try:
                msg = await ws.receive(timeout=opts.hello_timeout_s)
            except asyncio.TimeoutError:
                raise ProtocolError("bad_hello", f"no hello within {opts.hello_timeout_s:g} s", fatal=True) from None
            if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
                return ws
            if msg.type != WSMsgType.TEXT:
                raise ProtocolError("bad_hello", "the first message must be a JSON hello (text), got binary data",
                                    fatal=True)
            hello = self.parse_hello(msg.data)
            ls = LiveSession(self, ws, hello)
            await self._open(ls, hello)
            sender = asyncio.create_task(ls.sender())
            ls.send_json(self.ready_message(ls))
            async for msg in ws:
                if ls.finished:
                    break
                try:
                    ls.rate_limit()
                    if msg.type == WSMsgType.BINARY:
                        if len(msg.data) > opts.max_frame_bytes:
                            raise ProtocolError("frame_too_large", f"binary frame of {len(msg.data)} bytes; the "
                                                f"limit is {opts.max_frame_bytes}", fatal=True,
                                                close_code=CLOSE_TOO_BIG)
                        ls.add_audio(msg.data)
                    elif msg.type == WSMsgType.TEXT:
                        self._message(ls, msg.data)
                    elif msg.type == WSMsgType.ERROR:
                        break
                except ProtocolError as e:
                    ls.send_json({"type": "error", "code": e.code, "message": e.message, "fatal": e.fatal})
                    if e.fatal:
                        ls.close(e.close_code, e.code)
                        self.release(ls)
                        break
            if ws.exception() is not None and not ls.finished:  # e.g. a frame over aiohttp's own limit
                self.release(ls)
        except ProtocolError as e:
            if ls is not None and sender is not None:
                ls.send_json({"type": "error", "code": e.code, "message": e.message, "fatal": True})
                ls.close(e.close_code, e.code)
            elif not ws.closed:
                await ws.send_str(json.dumps({"type": "error", "code": e.code, "message": e.message, "fatal": True}))
                await ws.close(code=e.close_code, message=e.code.encode())
        finally:
            if ls is not None:
                self.release(ls)
            if sender is not None:
                try:
                    await asyncio.wait_for(sender, timeout=5.0)
                except (asyncio.TimeoutError, asyncio.CancelledError):
                    sender.cancel()
            if not ws.closed:
                await ws.close()
        return ws

    def _message(self, ls: LiveSession, text: str) -> None:
        try:
            msg = json.loads(text)
        except ValueError as e:
            raise ProtocolError("bad_message", f"not JSON ({e})") from e
        if not isinstance(msg, dict):
            raise ProtocolError("bad_message", "messages must be JSON objects with a 'type'")
        kind = msg.get("type")
        if kind == "text":
            ls.add_text(msg.get("text"))
        elif kind == "video":
            ls.add_video(msg.get("data"))
        elif kind == "end":
            ls.ended = True
            self.wake()
        elif kind == "ping":
            ls.send_json({"type": "pong", "tick": self.ticks})
        else:
            raise ProtocolError("bad_message", f"unknown message type {kind!r}; expected text, video, end or ping")

    async def _open(self, ls: LiveSession, hello: dict) -> None:
        from interaction_jax.inference.session import NoCapacityError

        async with self._lock:
            self._ids += 1
            try:
                ls.session = self.scheduler.open_session(
                    seed=hello["seed"], temperature=hello["temperature"], top_p=hello["top_p"],
                    metadata=hello["metadata"], session_id=f"s{self._ids}-{int(time.time() * 1000) % 10**8}")
            except NoCapacityError as e:
                raise ProtocolError("server_full", f"server full: all {self.engine.slots} session slots are taken; "
                                    "try again later", fatal=True, close_code=CLOSE_TRY_AGAIN) from e
            T = self.layout.micro_turn_s
            ls.start_time = asyncio.get_running_loop().time() + (1 + self.options.jitter_turns) * T
            self.live[ls.session.id] = ls
        self.wake()

    def release(self, ls: LiveSession) -> None:
        """Frees the slot now if no tick is running, else right after it (never mid-step)."""
        ls.finished = True
        if ls.session is None or ls.session.closed:
            return
        if self._lock.locked():
            asyncio.get_running_loop().create_task(self._release_locked(ls))
        else:
            self._close(ls)

    async def _release_locked(self, ls: LiveSession) -> None:
        async with self._lock:
            self._close(ls)

    def _close(self, ls: LiveSession) -> None:
        if ls.session is not None and not ls.session.closed:
            ls.session.close()
        self.live.pop(getattr(ls.session, "id", None), None)
        self.wake()

    # ---- the clock ---------------------------------------------------------------------------
    async def _clock(self) -> None:
        loop = asyncio.get_running_loop()
        T = self.layout.micro_turn_s
        if self.options.clock == "step":
            while True:
                await self._wake.wait()
                self._wake.clear()
                try:
                    while self._step_ready():
                        await self._tick(loop.time(), 0.0)
                except Exception:  # a bug in one tick must not stop the clock for every session
                    logging.exception("[serve] tick failed")
            return
        t0, k = loop.time(), 1
        while True:
            deadline = t0 + k * T
            await asyncio.sleep(max(0.0, deadline - loop.time()))
            late = loop.time() - deadline
            if late >= T:  # whole micro-turns with no tick at all: reported, then the grid moves on
                skipped = int(late // T)
                self.missed_deadlines += skipped
                for ls in self.live.values():
                    ls.stats["missed_deadlines"] += skipped
                k += skipped
                late -= skipped * T
            try:
                await self._tick(loop.time(), late)
            except Exception:  # a bug in one tick must not stop the clock for every session
                logging.exception("[serve] tick failed")
            k += 1

    def _step_ready(self) -> bool:
        sessions = [ls for ls in self.live.values() if not ls.finished]
        for ls in sessions:
            if ls.drained():
                self._finish(ls)
        sessions = [ls for ls in sessions if not ls.finished]
        return bool(sessions) and all(ls.has_chunk() for ls in sessions)

    def _finish(self, ls: LiveSession, code: str | None = None, message: str = "") -> None:
        """Final message, slot freed, socket closed (called with the lock held or between ticks)."""
        if ls.session is not None and ls.session.outputs:  # transcript() needs at least one micro-turn
            tr = ls.session.transcript()
            words = [{"text": w.text, "start": w.start, "end": w.end} for w in tr.words[ls.words_sent:]]
            if words:
                ls.send_json({"type": "words", "words": words, "final": True})
        done = {"type": "done", "summary": ls.summary()}
        if code:
            done.update(code=code, message=message)
        ls.send_json(done)
        ls.close(CLOSE_NORMAL, code or "done")
        self._close(ls)

    async def _tick(self, now: float, late: float) -> None:
        from interaction_jax.inference.session import SessionLimitError

        loop = asyncio.get_running_loop()
        async with self._lock:
            ticked = []
            for ls in list(self.live.values()):
                if ls.finished:
                    continue
                if self.options.clock == "realtime":
                    if ls.drained():
                        self._finish(ls)
                        continue
                    if now < ls.start_time - 1e-3:
                        continue
                if ls.fed >= self.max_turns:
                    self._finish(ls, "session_limit", f"session length limit of {self.options.max_session_s:g} s")
                    continue
                chunk = ls.next_chunk()
                try:
                    ls.session.push(chunk)
                except SessionLimitError as e:
                    ls.fed -= 1  # that chunk was refused, not fed (the summary counts micro-turns fed)
                    self._finish(ls, "session_limit", str(e))
                    continue
                ticked.append(ls)
            if not ticked:
                return
            t0 = time.perf_counter()
            try:
                outs = await loop.run_in_executor(self._pool, self._work, ticked)
            except Exception as e:  # an engine failure ends the sessions of this tick, not the server
                for ls in ticked:
                    ls.send_json({"type": "error", "code": "internal", "message": f"engine step failed: {e}",
                                  "fatal": True})
                    ls.close(CLOSE_INTERNAL, "internal")
                    self._close(ls)
                return
            self.ticks += 1
            tick_ms = (time.perf_counter() - t0) * 1e3
            overrun = tick_ms > self.layout.micro_turn_s * 1e3
            if overrun and self.options.clock == "realtime":
                self.missed_deadlines += 1
            for ls in ticked:
                if ls.finished:
                    continue
                if ls.session.id not in outs:  # the scheduler closed this session alone (its input failed)
                    ls.send_json({"type": "error", "code": "internal", "fatal": True,
                                  "message": f"session input failed: {ls.session.error}"})
                    ls.close(CLOSE_INTERNAL, "internal")
                    self._close(ls)
                    continue
                o, pcm, mel = outs[ls.session.id]
                if overrun and self.options.clock == "realtime":
                    ls.stats["missed_deadlines"] += 1
                ls.step_ms.append(o.latency_s * 1e3)
                self._send_turn(ls, o, pcm, mel, tick_ms, late, overrun)
                if self.options.clock == "step" and ls.drained():
                    self._finish(ls)

    def _work(self, ticked: list[LiveSession]) -> dict:
        """Worker thread: one engine tick, then every session's audio for the micro-turn in one batch."""
        outs = self.scheduler.tick()
        live = [ls for ls in ticked if ls.session.id in outs]  # the others: closed by the scheduler (Session.error)
        audio = turns_audio([outs[ls.session.id].mel for ls in live], self.feature_params, self.n_iter)
        result = {}
        for ls, a in zip(live, audio, strict=True):
            o = outs[ls.session.id]
            result[ls.session.id] = (o, pcm16_encode(ls.resample_out(a)), o.mel if ls.return_mel else None)
        return result

    def _send_turn(self, ls: LiveSession, o, pcm: bytes, mel, tick_ms: float, late: float, overrun: bool) -> None:
        tr = ls.session.transcript()
        done_words = tr.words[:-1] if tr.words else []
        words = [{"text": w.text, "start": w.start, "end": w.end} for w in done_words[ls.words_sent:]]
        ls.words_sent = max(ls.words_sent, len(done_words))
        events = [{"time": t, "event": name} for t, name in tr.events[ls.events_sent:]]
        ls.events_sent = len(tr.events)
        heard = []
        if self.heard_transcript:
            new = ls.session.heard_words()[ls.heard_sent:]
            ls.heard_sent += len(new)
            heard = [{"text": w.text, "time": w.time} for w in new]
        msg = {"type": "turn", "turn": o.turn, "play_time": self.layout.output_window(o.turn)[0],
               "tokens": [int(t) for t in o.text_tokens], "words": words, "heard": heard,
               "partial": tr.words[-1].text if tr.words else "", "events": events, "audio_bytes": len(pcm),
               "stats": {"tick": self.ticks, "step_ms": o.latency_s * 1e3, "tick_ms": tick_ms, "late_ms": late * 1e3,
                         "overrun": overrun, "buffered_ms": len(ls.buf) / ls.rate * 1e3,
                         "underruns": ls.stats["underruns"], "missed_deadlines": ls.stats["missed_deadlines"],
                         "sessions": len(self.live)}}
        if mel is not None:
            m = np.ascontiguousarray(mel, "<f4")
            msg["mel"] = {"shape": list(m.shape), "data": base64.b64encode(m.tobytes()).decode()}
        ls.send_json(msg)
        self._send_delegations(ls)
        ls.send_bytes(pcm)

    def _send_delegations(self, ls: LiveSession) -> None:
        """Control events for the background model: request made, result arrived."""
        if self.scheduler.hub is None:
            return
        for d in ls.session.delegation_log():
            key = ("req", d.job_id)
            if key not in ls.results_sent:
                ls.results_sent.add(key)
                ls.send_json({"type": "control", "event": "delegation_requested", "job_id": d.job_id,
                              "time": d.time, "request": d.request})
            if d.result_time is not None and d.job_id not in ls.results_sent:
                ls.results_sent.add(d.job_id)
                ls.send_json({"type": "control", "event": "delegation_result", "job_id": d.job_id,
                              "time": d.result_time, "status": d.status, "result": d.result})


async def start(server: StreamServer, host: str = "127.0.0.1", port: int = 8998):
    """Starts serving; returns (aiohttp AppRunner, bound port). Stop with `await runner.cleanup()`."""
    from aiohttp import web

    runner = web.AppRunner(server.make_app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    return runner, int(runner.addresses[0][1])


def check_bind(host: str, token: str | None, insecure: bool) -> None:
    """Binding beyond loopback needs a token or an explicit --insecure (anyone could talk to the model)."""
    if host not in LOOPBACK and not token and not insecure:
        raise ValueError(f"--host={host} is not loopback: pass --token=SECRET (clients send it as a bearer token) "
                         "or --insecure to serve without one")




def warm_up(engine) -> None:
    """Compiles the step and runs one throw-away micro-turn (slot reset, STFT, vocoder and their lazy
    imports), so the first client's first tick costs what every later one does."""
    from interaction_jax.inference.session import Chunk, Scheduler

    engine.step(engine.empty_inputs())  # an all-idle tick changes nothing
    sched = Scheduler(engine)
    s = sched.open_session(session_id="warm-up")
    rate = int(engine.feature_params.sample_rate)
    s.push(Chunk(audio=np.zeros(int(round(engine.layout.micro_turn_s * rate)), np.float32), sample_rate=rate))
    (out,) = sched.tick().values()
    turn_audio(out.mel, engine.feature_params, 1)
    s.close()


def _page() -> str:
    """The browser client (serve_page.html): microphone via an AudioWorklet at 16 kHz, playback, transcript."""
    import pathlib

    return (pathlib.Path(__file__).parent / "serve_page.html").read_text(encoding="utf-8")


def _define_flags() -> None:
    from absl import flags

    from interaction_jax import cli

    cli.DEFINE_config("config", "Config file (default: WORKDIR/config.json, else configs/tiny.py).")
    flags.DEFINE_string("workdir", None, "Training run directory: parameters from its newest checkpoint.")
    flags.DEFINE_enum("init", "checkpoint", ["checkpoint", "random"], "Parameters: checkpoint or random init.")
    flags.DEFINE_string("host", "127.0.0.1", "Address to bind (non-loopback needs --token or --insecure).")
    flags.DEFINE_integer("port", 8998, "Port (0 = any free port; the bound one is printed).", lower_bound=0,
                         upper_bound=65535)
    flags.DEFINE_string("token", None, "Bearer token clients must send (Authorization header or ?token=).")
    flags.DEFINE_bool("insecure", False, "Allow a non-loopback --host without --token.")
    flags.DEFINE_enum("clock", "realtime", list(CLOCKS), "realtime: tick every micro-turn of wall time; step: tick "
                      "when every session has sent its next chunk (deterministic, for tests).")
    flags.DEFINE_integer("slots", 0, "Concurrent sessions (0 = config.inference.slots).", lower_bound=0)
    flags.DEFINE_integer("jitter_turns", 1, "Micro-turns of audio buffered before a session's first tick.",
                         lower_bound=0)
    flags.DEFINE_float("max_buffer_s", 10.0, "Audio a client may send ahead of the clock.", lower_bound=0.0)
    flags.DEFINE_integer("max_frame_bytes", 1 << 20, "Largest WebSocket frame a client may send.", lower_bound=1)
    flags.DEFINE_float("max_messages_per_s", 200.0, "Client messages per second per session.", lower_bound=0.0)
    flags.DEFINE_float("max_session_s", 600.0, "Longest session in seconds of session time.", lower_bound=0.0)
    flags.DEFINE_integer("griffin_lim_iters", 0, "Vocoder iterations per micro-turn of model audio (0 = "
                         "config.inference.griffin_lim_iters); fewer leave more of a tick to the model.", lower_bound=0)
    flags.DEFINE_bool("background", True, "Run delegation requests live with the configured background backend.")


def main(argv) -> None:
    """The serve command (module docstring); bad flags exit 2 with one line before anything compiles."""
    from absl import app, flags

    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}: serve takes only flags")
    import os

    from interaction_jax.config_lib import ConfigError, config_for_run
    from interaction_jax.inference.params import ParamsError
    from interaction_jax.train.checkpoint import CheckpointMismatchError

    F = flags.FLAGS
    try:
        check_bind(F.host, F.token, F.insecure)
        if F.init == "checkpoint" and not F.workdir:
            raise ValueError("--init=checkpoint needs --workdir (or pass --init=random)")
        if F.workdir and not os.path.isdir(F.workdir):
            raise ValueError(f"--workdir={F.workdir} does not exist (expected a training run directory)")
        options = ServeOptions(clock=F.clock, jitter_turns=F.jitter_turns, max_buffer_s=F.max_buffer_s,
                               max_frame_bytes=F.max_frame_bytes, max_messages_per_s=F.max_messages_per_s,
                               max_session_s=F.max_session_s, token=F.token,
                               griffin_lim_iters=F.griffin_lim_iters or None)
        config = config_for_run(F.config, F.workdir if F.init == "checkpoint" else None, "configs/tiny.py")
        from interaction_jax.evaluate import make_engine

        engine = make_engine(config, F.workdir, F.init, F.slots)
    except (ValueError, ConfigError, ParamsError, CheckpointMismatchError) as e:
        raise app.UsageError(str(e), exitcode=2) from e
    t0 = time.perf_counter()
    warm_up(engine)
    print(f"[serve] compiled the micro-turn step in {time.perf_counter() - t0:.1f} s", flush=True)
    hub = None
    if F.background:
        from interaction_jax.background.backends import make_hub
        from interaction_jax.streams.tokenizer import make_tokenizer

        hub = make_hub(config, make_tokenizer(config.text))
    server = StreamServer(engine, options, hub=hub)

    async def serve_forever():
        runner, port = await start(server, F.host, F.port)
        print(f"[serve] {engine.slots} slots, {options.clock} clock; listening on ws://{F.host}:{port}/ws "
              f"(page: http://{F.host}:{port}/)", flush=True)
        try:
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()

    try:
        asyncio.run(serve_forever())
    except KeyboardInterrupt:
        print("[serve] stopped", flush=True)


if __name__ == "__main__":
    from interaction_jax.cli import run as run_cli

    run_cli(main, name="serve", define_flags=_define_flags)
