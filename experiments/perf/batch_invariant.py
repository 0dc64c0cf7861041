"""Overhead of `model.batch_invariant=True`: streaming-engine step time with and without the mode.

    python experiments/perf/batch_invariant.py --configs=tiny,small --sessions=1 --lengths=0,60 --ticks=10 \
        --json=experiments/perf/results/batch_invariant.json

For each (config, concurrent sessions, session length) both engines (flag off / on, same weights,
"sliding" context policy) run `--ticks` micro-turns with every slot active, alternating
off / on tick by tick so that a busy machine slows both alike; the table gives the median step
of each and their ratio. A session length L starts every slot at micro-turn L / 0.2 s (the cache
content is irrelevant to the timing): the default engine attends over every ring row at any
length, the batch-invariant one visits only the live key chunks, so its cost grows until the
window (inference.window_seconds) is full. Timings are never asserted in tests.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)


def _engine(config_name: str, sessions: int, invariant: bool):
    from flax import nnx

    from interaction_jax.config_lib import load_config
    from interaction_jax.inference.engine import StreamEngine
    from interaction_jax.model.interaction_model import InteractionModel

    c = load_config(os.path.join(REPO, "configs", f"{config_name}.py"),
                    [f"inference.slots={sessions}", f"model.batch_invariant={invariant}"])
    return StreamEngine(c, InteractionModel(c, rngs=nnx.Rngs(0)))


def bench(config_name: str, sessions: int, lengths: list[float], ticks: int) -> list[dict]:
    import jax.numpy as jnp

    engines = {flag: _engine(config_name, sessions, flag) for flag in (False, True)}
    rows = []
    for seconds in lengths:
        times: dict[bool, list[float]] = {False: [], True: []}
        compile_s = {}
        for flag, eng in engines.items():
            for s in range(sessions):
                eng.reset(s, seed=s)
            turn = int(round(seconds / eng.layout.micro_turn_s))
            length = turn * eng.layout.positions_per_turn
            eng.state = eng.state._replace(length=jnp.full((sessions,), length, jnp.int32),
                                           turn=jnp.full((sessions,), turn, jnp.int32))
            inputs = eng.empty_inputs()
            inputs["active"][:] = True
            t0 = time.perf_counter()
            eng.step(inputs)
            compile_s[flag] = time.perf_counter() - t0
        rs = np.random.RandomState(0)
        for _ in range(ticks):
            for flag, eng in engines.items():
                inputs = eng.empty_inputs()
                inputs["active"][:] = True
                inputs["dmel"][:] = rs.randint(0, 16, inputs["dmel"].shape)
                t0 = time.perf_counter()
                eng.step(inputs)
                times[flag].append(time.perf_counter() - t0)
        off, on = float(np.median(times[False])), float(np.median(times[True]))
        rows.append(dict(config=config_name, sessions=sessions, length_s=seconds, off_ms=off * 1e3, on_ms=on * 1e3,
                         ratio=on / off, off_p99_ms=float(np.percentile(times[False], 99)) * 1e3,
                         on_p99_ms=float(np.percentile(times[True], 99)) * 1e3, first_call_off_s=compile_s[False],
                         first_call_on_s=compile_s[True], ticks=ticks))
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", default="tiny,small")
    ap.add_argument("--sessions", default="1")
    ap.add_argument("--lengths", default="0,60", help="session lengths in seconds at which the step is timed")
    ap.add_argument("--ticks", type=int, default=10)
    ap.add_argument("--json", default=os.path.join(REPO, "experiments/perf/results/batch_invariant.json"))
    args = ap.parse_args()
    import jax

    rows = []
    lengths = [float(x) for x in args.lengths.split(",")]
    for cfg in args.configs.split(","):
        for n in (int(x) for x in args.sessions.split(",")):
            rows += bench(cfg, n, lengths, args.ticks)
    print(f"\n{'config':8} {'sess':>4} {'len s':>6} {'off ms':>9} {'on ms':>9} {'on/off':>7}")
    for r in rows:
        print(f"{r['config']:8} {r['sessions']:>4} {r['length_s']:>6.0f} {r['off_ms']:>9.1f} {r['on_ms']:>9.1f} "
              f"{r['ratio']:>7.2f}")
    from interaction_jax.results_io import write_record

    write_record(args.json, {"device": str(jax.devices()[0].device_kind), "cpu_count": os.cpu_count(),
                             "load_avg_1m": os.getloadavg()[0], "rows": rows})


if __name__ == "__main__":
    main()
