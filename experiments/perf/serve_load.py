"""Load benchmark of the live server: N concurrent real-time clients over loopback for M seconds.

    python experiments/perf/serve_load.py [--configs=tiny,small] [--clients=1,4,16] [--seconds=20]
        [--out=experiments/perf/results/serve_load.json]

For each config it starts `python -m interaction_jax.serve --init=random --clock=realtime
--slots=max(clients) --port=0` (random weights: the step costs what a trained model's does), then
for each client count runs that many `interaction_jax.client.stream(..., realtime=True)` sessions at
once, each sending M seconds of a tone with noise, one micro-turn chunk per micro-turn of wall time.
Per row it reports:

* tick time p50 / p99: the server's batched step + vocoder per tick (`turn.stats.tick_ms`, one
  value per tick however many sessions it served);
* deadline misses: ticks over one micro-turn plus micro-turns with no tick at all (`/healthz`
  `missed_deadlines`, before vs after the row), and the sessions' underruns (audio not there in time);
* latency p50 / p99: from the moment a chunk's last byte was handed to the socket (on loopback,
  its arrival) to the arrival of the model audio of the micro-turn that answers it (the turn with
  the chunk's index: its output is computed from that chunk).

Timings depend on the machine; run on a quiet one. The table is printed and the rows written to
`--out` (JSON, with the hardware).
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import re
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MAX_CLIENTS, MAX_SECONDS = 64, 600.0


def _audio(seconds: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 16000)) / 16000
    return (0.3 * np.sin(2 * np.pi * (150 + 250 * rng.random()) * t) + 0.02 * rng.standard_normal(t.size)).astype(
        np.float32)


def _pct(values, q: float) -> float | None:
    return float(np.percentile(values, q)) if len(values) else None


async def _health(url: str) -> dict:
    import aiohttp

    async with aiohttp.ClientSession() as http, http.get(url.replace("ws://", "http://") + "/healthz") as r:
        return await r.json()


async def measure(url: str, clients: int, seconds: float, seed: int = 0) -> dict:
    """One row: `clients` real-time sessions of `seconds` each, at once, against the server at `url`."""
    from interaction_jax.client import stream

    before = await _health(url)
    t0 = time.perf_counter()
    results = await asyncio.gather(*[
        stream(url, _audio(seconds, seed + i), 16000, realtime=True, seed=seed + i, timeout_s=seconds * 4 + 120)
        for i in range(clients)])
    wall = time.perf_counter() - t0
    after = await _health(url)
    ticks = {}
    for res in results:
        for m in res.turns:
            ticks[m["stats"]["tick"]] = m["stats"]["tick_ms"]
    tick_ms = list(ticks.values())
    latency = [1e3 * (res.audio_at[t] - res.sent_at[t])
               for res in results for t in range(min(len(res.sent_at), len(res.audio_at)))]
    summaries = [(res.done or {}).get("summary", {}) for res in results]
    return {"clients": clients, "seconds": seconds, "wall_s": wall, "ticks": len(tick_ms),
            "tick_ms_p50": _pct(tick_ms, 50), "tick_ms_p99": _pct(tick_ms, 99),
            "missed_deadlines": after["missed_deadlines"] - before["missed_deadlines"],
            "underruns": int(sum(s.get("underruns", 0) for s in summaries)),
            "latency_ms_p50": _pct(latency, 50), "latency_ms_p99": _pct(latency, 99),
            "latency_samples": len(latency), "micro_turns": int(sum(len(r.turns) for r in results)),
            "errors": [e for r in results for e in r.errors]}


class Server:
    """`python -m interaction_jax.serve` in a subprocess on a free loopback port (started by us, stopped by pid)."""

    def __init__(self, config: str, slots: int, timeout_s: float = 1800.0, griffin_lim_iters: int = 0):
        self.log = tempfile.NamedTemporaryFile("w+", prefix="serve_load_", suffix=".log", delete=False)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "interaction_jax.serve", f"--config={config}", "--init=random", "--clock=realtime",
             f"--slots={slots}", "--port=0", "--nobackground", f"--griffin_lim_iters={griffin_lim_iters}"],
            cwd=REPO, stdout=subprocess.PIPE, stderr=self.log, text=True)
        lines: queue.Queue = queue.Queue()
        threading.Thread(target=lambda: [lines.put(x) for x in self.proc.stdout], daemon=True).start()
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                self.stop()
                raise RuntimeError(f"server did not start within {timeout_s:g} s (log: {self.log.name})") from None
            m = re.search(r"listening on (ws://\S+?)/ws", line)
            if m:
                self.url = m.group(1)
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode} (log: {self.log.name})")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def run(configs: list[str], clients: list[int], seconds: float, griffin_lim_iters: int = 0) -> list[dict]:
    """Every (config, client count) row; one server per config."""
    rows = []
    for name in configs:
        server = Server(os.path.join(REPO, "configs", f"{name}.py"), max(clients), griffin_lim_iters=griffin_lim_iters)
        try:
            for n in clients:
                row = {"config": name, **asyncio.run(measure(server.url, n, seconds))}
                print(json.dumps(row), flush=True)
                rows.append(row)
        finally:
            server.stop()
    return rows


def table(rows: list[dict]) -> str:
    def f(v):
        return "-" if v is None else f"{v:.1f}"

    out = ["| config | clients | s | ticks | tick p50 ms | tick p99 ms | missed deadlines | underruns "
           "| latency p50 ms | latency p99 ms |", "|" + " --- |" * 10]
    for r in rows:
        out.append(f"| {r['config']} | {r['clients']} | {r['seconds']:g} | {r['ticks']} | {f(r['tick_ms_p50'])} "
                   f"| {f(r['tick_ms_p99'])} | {r['missed_deadlines']} | {r['underruns']} | {f(r['latency_ms_p50'])} "
                   f"| {f(r['latency_ms_p99'])} |")
    return "\n".join(out)


def _define_flags() -> None:
    from absl import flags

    flags.DEFINE_list("configs", ["tiny", "small"], "Config names under configs/.")
    flags.DEFINE_list("clients", ["1", "4", "16"], f"Concurrent client counts (1..{MAX_CLIENTS}).")
    flags.DEFINE_float("seconds", 20.0, f"Audio each client streams, in seconds (0..{MAX_SECONDS:g}].")
    flags.DEFINE_string("out", os.path.join(REPO, "experiments/perf/results/serve_load.json"), "JSON output.")
    flags.DEFINE_integer("griffin_lim_iters", 0, "The server's --griffin_lim_iters (0: the config's).", lower_bound=0)


def main(argv) -> None:
    from absl import app, flags

    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}", exitcode=2)
    F = flags.FLAGS
    try:
        clients = [int(c) for c in F.clients]
    except ValueError as e:
        raise app.UsageError(f"--clients must be integers, got {F.clients}", exitcode=2) from e
    if not clients or not all(1 <= c <= MAX_CLIENTS for c in clients):
        raise app.UsageError(f"--clients must each be in [1, {MAX_CLIENTS}], got {F.clients}", exitcode=2)
    if not 0 < F.seconds <= MAX_SECONDS:
        raise app.UsageError(f"--seconds must be in (0, {MAX_SECONDS:g}], got {F.seconds}", exitcode=2)
    missing = [c for c in F.configs if not os.path.isfile(os.path.join(REPO, "configs", f"{c}.py"))]
    if missing or not F.configs:
        raise app.UsageError(f"--configs: no configs/<name>.py for {missing or F.configs}", exitcode=2)
    import signal

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so `finally` stops the server we started
    rows = run(list(F.configs), clients, F.seconds, F.griffin_lim_iters)
    print(table(rows))
    from interaction_jax.results_io import write_record

    write_record(F.out, {"command": " ".join(sys.argv), "griffin_lim_iters": F.griffin_lim_iters or None,
                         "rows": rows})


if __name__ == "__main__":
    sys.path.insert(0, REPO)
    from interaction_jax.cli import run as run_cli

    run_cli(main, name="serve_load", define_flags=_define_flags)
