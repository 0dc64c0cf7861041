"""Data pipeline throughput: packed micro-turns per second per CPU core.

    python experiments/perf/data_pipeline.py --config=configs/tiny.py [--batches=20] [--out=results/data_pipeline.json]

Three rows, measured in one run on the same machine:
  * render+features+pack: synthetic episodes rendered with espeak-ng on demand (never cached),
  * store (features cached): episodes from a prepared ArrayRecord store with stored log-mels,
  * pack only: windows cut from already-gridded episodes (the floor cost per batch).
Rates are per process (one core busy); with `data.worker_count` workers multiply by ~workers.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time

from absl import flags
from ml_collections import config_flags

FLAGS = flags.FLAGS


def _define_flags() -> None:
    """Defined when run as a script, not on import (tests import this module in-process)."""
    config_flags.DEFINE_config_file("config", "configs/tiny.py", "Config file.", lock_config=True)
    flags.DEFINE_integer("batches", 20, "Batches timed per row.")
    flags.DEFINE_integer("episodes", 24, "Episodes in the prepared store.")
    flags.DEFINE_string("out", "experiments/perf/results/data_pipeline.json", "JSON output path.")


def _rate(it, batches: int, turns_per_batch: int) -> dict:
    """Sustained rate over `batches` batches after one warm-up batch (read-ahead included)."""
    next(it)  # warm-up (imports, first element)
    times = []
    t_start = time.perf_counter()
    for _ in range(batches):
        t0 = time.perf_counter()
        next(it)
        times.append(time.perf_counter() - t0)
    total = time.perf_counter() - t_start
    return {
        "median_batch_s": statistics.median(times),
        "micro_turns_per_s": turns_per_batch * batches / total,
        "batches": batches,
    }


def main(argv):
    del argv
    import numpy as np

    from interaction_jax.data.pipeline import RandomWindow, ToGrid, make_iterator
    from interaction_jax.data.prepare import prepare
    from interaction_jax.data.sources import SyntheticSource
    from interaction_jax.data.store import open_store
    from interaction_jax.streams.layout import StreamLayout

    cfg = FLAGS.config
    d = cfg.data
    turns = d.batch_size * d.window_micro_turns
    kw = dict(process_index=0, process_count=1)
    rows = {}
    # Every element a never-seen episode (one epoch over enough episodes): nothing is cached.
    n_fresh = (FLAGS.batches + 1) * d.batch_size
    src = SyntheticSource(d.task, n_fresh, 10_000, d.episode_seconds, cfg.features)
    it = make_iterator(cfg, src, worker_count=0, num_epochs=1, **kw)
    rows["render+features+pack"] = _rate(it, FLAGS.batches, turns)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "store")
        prepare(path, task=d.task, num_episodes=FLAGS.episodes, seed=20_000, episode_seconds=d.episode_seconds)
        store = open_store(path)
        rows["store (features cached)"] = _rate(make_iterator(cfg, store, worker_count=0, **kw), FLAGS.batches, turns)
        # pack only: RandomWindow on pre-computed grids
        tg = ToGrid(StreamLayout.from_config(cfg), cfg.text, cfg.features)
        grids = [tg.map(store[i]) for i in range(min(len(store), 8))]
        rw, rng = RandomWindow(d.window_micro_turns), np.random.default_rng(0)
        times = []
        for b in range(FLAGS.batches):
            t0 = time.perf_counter()
            for j in range(d.batch_size):
                rw.random_map(grids[(b + j) % len(grids)], rng)
            times.append(time.perf_counter() - t0)
        med = statistics.median(times)
        rows["pack only"] = {"median_batch_s": med, "micro_turns_per_s": turns / med, "batches": FLAGS.batches}
    for r in rows.values():
        r["micro_turns_per_s_per_core"] = r["micro_turns_per_s"]  # one process = one busy core
    print(f"\ndata pipeline, config batch={d.batch_size} x {d.window_micro_turns} micro-turns, 1 process, "
          f"{os.cpu_count()} cores on the machine")
    print(f"{'row':28s} {'median s/batch':>15s} {'micro-turns/s/core':>20s}")
    for name, r in rows.items():
        print(f"{name:28s} {r['median_batch_s']:15.4f} {r['micro_turns_per_s']:20.1f}")
    from interaction_jax.results_io import write_record

    write_record(FLAGS.out, {"config": sys.argv, "rows": rows, "cpu_count": os.cpu_count()})


if __name__ == "__main__":
    from interaction_jax.cli import run as run_cli

    run_cli(main, define_flags=_define_flags)
