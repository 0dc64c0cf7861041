"""Stream a file to a running server: `python -m interaction_jax.client` (protocol: docs/serving.md).

    python -m interaction_jax.client --url=ws://127.0.0.1:8998 --input=user.wav --out=DIR
        [--text_events=events.json] [--realtime] [--seed=0] [--token=SECRET]

Sends the hello, then the audio in micro-turn chunks (typed text from `--text_events`, a JSON
list of {"time": s, "text": ...}, just before the chunk of the micro-turn it falls in), then
"end", and collects what the server sends back. Without `--realtime` it sends as fast as the
server's buffer allows (flow control on the server's turn messages); with it, one chunk per
micro-turn of wall time, as a microphone would. Writes model.wav (the model's audio on the
session clock), transcript.json (timed words and per-turn tokens) and events.json (control
events, warnings, errors, per-tick statistics, the server's summary), like `interaction_jax.stream`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import time
from collections.abc import Sequence

import numpy as np

from interaction_jax.errors import UserError
from interaction_jax.serve import PROTOCOL_VERSION, pcm16_encode


class ClientError(UserError, RuntimeError):
    """The server refused the session, or could not be reached."""


@dataclasses.dataclass
class ClientResult:
    """Everything one session received (in order)."""

    ready: dict = dataclasses.field(default_factory=dict)
    turns: list[dict] = dataclasses.field(default_factory=list)  # "turn" messages
    audio: list[bytes] = dataclasses.field(default_factory=list)  # PCM16 per turn, in turn order
    words: list[dict] = dataclasses.field(default_factory=list)
    heard: list[dict] = dataclasses.field(default_factory=list)  # the model's transcript of the user: {text, time}
    controls: list[dict] = dataclasses.field(default_factory=list)
    warnings: list[dict] = dataclasses.field(default_factory=list)
    errors: list[dict] = dataclasses.field(default_factory=list)
    done: dict | None = None
    close_code: int | None = None
    sent_at: list[float] = dataclasses.field(default_factory=list)  # perf_counter after each chunk's audio was sent
    audio_at: list[float] = dataclasses.field(default_factory=list)  # perf_counter when each turn's audio arrived

    def mel(self, turn_index: int) -> np.ndarray:
        """The mel of a turn message (hello with return_mel=True)."""
        import base64

        m = self.turns[turn_index]["mel"]
        return np.frombuffer(base64.b64decode(m["data"]), "<f4").reshape(m["shape"])


def ws_url(url: str, token: str | None = None) -> str:
    """ws://host:port -> ws://host:port/ws (the sessions endpoint)."""
    from yarl import URL

    u = URL(url)
    if u.path in ("", "/"):
        u = u.with_path("/ws")
    return str(u)


async def stream(url: str, audio: np.ndarray, sample_rate: int = 16000, *, text_events: Sequence = (),
                 realtime: bool = False, seed: int | None = None, temperature: float | None = None,
                 token: str | None = None, return_mel: bool = False, metadata: dict | None = None,
                 video_events: Sequence = (), timeout_s: float = 300.0) -> ClientResult:
    """Runs one session: `audio` float [-1, 1] at `sample_rate`, `text_events` [(time_s, text)],
    `video_events` [(time_s, JPEG/PNG bytes)]."""
    import aiohttp

    res = ClientResult()
    hello = {"type": "hello", "version": PROTOCOL_VERSION, "sample_rate": int(sample_rate), "format": "pcm16",
             "return_mel": bool(return_mel), "metadata": dict(metadata or {})}
    if seed is not None:
        hello["seed"] = int(seed)
    if temperature is not None:
        hello["temperature"] = float(temperature)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        async with aiohttp.ClientSession() as http, http.ws_connect(ws_url(url), headers=headers,
                                                                    max_msg_size=0) as ws:
            await ws.send_str(json.dumps(hello))
            msg = await ws.receive(timeout=timeout_s)
            if msg.type != aiohttp.WSMsgType.TEXT:
                raise ClientError(f"{url}: connection closed before the session started (code {ws.close_code})")
            first = json.loads(msg.data)
            if first.get("type") != "ready":
                await ws.close()
                raise ClientError(f"{url}: {first.get('code')}: {first.get('message')} (close code {ws.close_code})")
            res.ready = first
            await asyncio.wait_for(_run(ws, res, audio, text_events, video_events, realtime), timeout_s)
            res.close_code = ws.close_code
    except asyncio.TimeoutError as e:
        raise ClientError(f"{url}: session did not end within {timeout_s:g} s") from e
    except aiohttp.WSServerHandshakeError as e:
        raise ClientError(f"{url}: handshake refused ({e.status} {e.message})") from e
    except (aiohttp.ClientConnectionError, OSError) as e:
        raise ClientError(f"{url}: cannot connect ({e})") from e
    return res


async def _run(ws, res: ClientResult, audio: np.ndarray, text_events: Sequence, video_events: Sequence,
               realtime: bool) -> None:
    import base64

    import aiohttp

    T, S = float(res.ready["micro_turn_s"]), int(res.ready["samples_per_chunk"])
    n = max(1, -(-len(audio) // S))
    pcm = pcm16_encode(np.pad(np.asarray(audio, np.float32), (0, n * S - len(audio))))
    by_turn: dict[int, list[dict]] = {}  # messages sent just before their micro-turn's audio
    for t_s, text in text_events:
        by_turn.setdefault(int(np.floor(float(t_s) / T + 1e-9)), []).append({"type": "text", "text": str(text)})
    for t_s, image in sorted(video_events, key=lambda e: e[0]):
        by_turn.setdefault(int(np.floor(float(t_s) / T + 1e-9)), []).append(
            {"type": "video", "data": base64.b64encode(image).decode()})
    ahead = max(1, int(float(res.ready["max_buffer_s"]) / T) - 2)
    progress = asyncio.Event()

    async def reader():
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.BINARY:
                res.audio.append(msg.data)
                res.audio_at.append(time.perf_counter())
                progress.set()
                continue
            if msg.type != aiohttp.WSMsgType.TEXT:
                break
            m = json.loads(msg.data)
            kind = m.get("type")
            if kind == "turn":
                res.turns.append(m)
                res.words.extend(m["words"])
                res.heard.extend(m.get("heard", []))
            elif kind == "words":
                res.words.extend(m["words"])
            elif kind == "done":
                res.done = m
            elif kind == "control":
                res.controls.append(m)
            elif kind == "warning":
                res.warnings.append(m)
            elif kind == "error":
                res.errors.append(m)
            progress.set()

    task = asyncio.create_task(reader())
    t0 = time.perf_counter()
    try:
        for t in range(n):
            if task.done():
                break
            if realtime:  # a chunk exists at the end of its micro-turn
                await asyncio.sleep(max(0.0, t0 + (t + 1) * T - time.perf_counter()))
            else:
                while t - len(res.turns) > ahead and not task.done():
                    progress.clear()
                    await progress.wait()
            for m in by_turn.pop(t, []):
                await ws.send_str(json.dumps(m))
            await ws.send_bytes(pcm[2 * t * S : 2 * (t + 1) * S])
            res.sent_at.append(time.perf_counter())
        if not task.done():
            for t in sorted(by_turn):
                for m in by_turn[t]:
                    await ws.send_str(json.dumps(m))
            await ws.send_str(json.dumps({"type": "end"}))
    except ConnectionResetError:
        pass
    await task


def write_outputs(res: ClientResult, out_dir: str) -> dict:
    """model.wav, transcript.json and events.json from a session; returns the events.json dict."""
    from interaction_jax.features.audio import save_wav

    os.makedirs(out_dir, exist_ok=True)
    rate = int(res.ready.get("output_sample_rate", 16000))
    lead = np.zeros(int(round(float(res.ready.get("output_delay_s", 0.0)) * rate)), np.int16)
    pcm = np.concatenate([lead, *[np.frombuffer(b, "<i2") for b in res.audio]])
    save_wav(os.path.join(out_dir, "model.wav"), pcm.astype(np.float32) / 32768.0, rate)
    T = float(res.ready.get("micro_turn_s", 0.2))
    tokens = [{"time": m["play_time"] + i * T / max(len(m["tokens"]), 1), "id": tok}
              for m in res.turns for i, tok in enumerate(m["tokens"])]
    with open(os.path.join(out_dir, "transcript.json"), "w") as f:
        out = {"words": res.words, "tokens": tokens}
        if res.ready.get("heard_transcript"):
            out["heard"] = res.heard
        json.dump(out, f, indent=1)
    step = np.array([m["stats"]["step_ms"] for m in res.turns] or [0.0])
    summary = {
        "session": res.ready, "micro_turns": len(res.turns),
        "events": [e for m in res.turns for e in m["events"]], "controls": res.controls,
        "warnings": res.warnings, "errors": res.errors,
        "step_latency_ms": {"median": float(np.median(step)), "p99": float(np.percentile(step, 99))},
        "ticks": [m["stats"] for m in res.turns], "server_summary": (res.done or {}).get("summary"),
        "close_code": res.close_code,
    }
    with open(os.path.join(out_dir, "events.json"), "w") as f:
        json.dump(summary, f, indent=1)
    return summary


def _define_flags() -> None:
    from absl import flags

    flags.DEFINE_string("url", "ws://127.0.0.1:8998", "Server URL (ws://host:port[/ws]).")
    flags.DEFINE_string("input", None, "User audio file (any rate; sent at 16 kHz, mono).")
    flags.DEFINE_string("text_events", None, "JSON list of {time, text} typed user messages.")
    flags.DEFINE_string("out", "client_out", "Output directory.")
    flags.DEFINE_bool("realtime", False, "Send one chunk per micro-turn of wall time.")
    flags.DEFINE_integer("seed", None, "Session sampling seed (default: the server's).")
    flags.DEFINE_float("temperature", None, "Model-text temperature (default: the server's).")
    flags.DEFINE_string("token", None, "Bearer token of a server started with --token.")
    flags.DEFINE_float("timeout_s", 600.0, "Give up after this many seconds.")


def main(argv) -> None:
    """Streams `--input` to a server and writes the session's outputs to `--out`."""
    from absl import app, flags

    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}: client takes only flags")

    from interaction_jax.features.audio import AudioError, load_audio

    F = flags.FLAGS
    try:
        if not F.input:
            raise ClientError("--input is required (a user audio file)")
        audio = load_audio(F.input, 16000, mono="mix")
        events = []
        if F.text_events:
            try:
                with open(F.text_events) as f:
                    events = [(float(e["time"]), str(e["text"])) for e in json.load(f)]
            except (OSError, ValueError, KeyError, TypeError) as e:
                raise ClientError(f"--text_events={F.text_events}: expected a JSON list of {{time, text}} ({e})") from e
        res = asyncio.run(stream(F.url, audio, 16000, text_events=events, realtime=F.realtime, seed=F.seed,
                                 temperature=F.temperature, token=F.token, timeout_s=F.timeout_s))
    except (ClientError, AudioError) as e:
        raise app.UsageError(str(e), exitcode=2) from e
    summary = write_outputs(res, F.out)
    print(f"[client] session {res.ready.get('session_id')}: {summary['micro_turns']} micro-turns, "
          f"{len(res.words)} words, {len(res.errors)} errors, close code {res.close_code}; wrote {F.out}/model.wav, "
          "transcript.json, events.json")


if __name__ == "__main__":
    from interaction_jax.cli import run as run_cli

    run_cli(main, name="client", define_flags=_define_flags)
