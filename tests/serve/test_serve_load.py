"""experiments/perf/serve_load.py at its tiniest: one real-time client for one second against an
in-process server (its row's counts against the server's own counters; timings never asserted),
the table, and its flag checks (exit 2)."""

from __future__ import annotations

import asyncio

import pytest
from conftest import REPO, load_script
from test_serve import ThreadServer, engine  # noqa: F401 - the engine fixture

from interaction_jax import cli


@pytest.fixture(scope="module")
def serve_load():
    return load_script(REPO / "experiments/perf/serve_load.py", "serve_load")  # defines no flags on import


def test_one_client_row(engine, serve_load):  # noqa: F811 - fixture from test_serve
    srv = ThreadServer(engine, clock="realtime")
    try:
        row = asyncio.run(serve_load.measure(srv.url, clients=1, seconds=1.0))
        ticks, missed = srv.server.ticks, srv.server.missed_deadlines
    finally:
        srv.stop()
    assert row["clients"] == 1 and not row["errors"], row
    assert row["ticks"] == ticks and row["missed_deadlines"] == missed  # one session: every tick served it
    assert row["micro_turns"] >= 5 and row["latency_samples"] == 5  # 1 s = 5 chunks, each answered by a turn
    assert 0 < row["latency_ms_p50"] <= row["latency_ms_p99"] and 0 < row["tick_ms_p50"] <= row["tick_ms_p99"]
    lines = serve_load.table([{"config": "tiny", **row}]).splitlines()
    assert len(lines) == 3 and lines[2].startswith("| tiny | 1 | 1 |")


@pytest.mark.parametrize("flag", ["--clients=0", "--clients=65", "--clients=x", "--seconds=0", "--configs=nope"])
def test_bad_flags_exit_2(serve_load, flag):
    assert cli.invoke(serve_load.main, ["serve_load", flag], name="serve_load",
                      define_flags=serve_load._define_flags) == 2
