"""Training throughput and MFU on this machine, with the data pipeline's rate beside it.

    python experiments/perf/train_throughput.py [--configs=tiny,small,small_moe] [--steps=5]
        [--batch_size=1 --window=10] [--out=experiments/perf/results/train_throughput.json]

A config is a name under configs/ or a path to a config file, optionally followed by
`@key=value+key=value` overrides, so one run can time variants of one config side by side
(the CPU speed switches of experiments/interaction_small, see experiments/perf/README.md).

For each config: forward+backward+AdamW step time (median over --steps after one compile
step), tokens/s, achieved model FLOP/s, and MFU against the f32 matmul peak measured in the
same run (CPU) or the device's published peak (GPU/TPU). Batch and window default to small
values so the 60M-parameter configs finish on a 2-core CPU; pass the config's own sizes on
an accelerator (--batch_size=0 --window=0). The data pipeline's delivery rate (batches/s
from a prepared-features source, 1 process) is printed beside the step's consumption rate.
"""

from __future__ import annotations

import os
import statistics
import time

import jax
import numpy as np
from absl import flags

FLAGS = flags.FLAGS


def _define_flags() -> None:
    """Defined when run as a script, not on import (tests import this module in-process)."""
    flags.DEFINE_list("configs", ["tiny", "small", "small_moe"],
                      "Config names under configs/ or config file paths, each optionally NAME@key=value+key=value.")
    flags.DEFINE_integer("steps", 5, "Timed steps per config.")
    flags.DEFINE_integer("batch_size", 1, "Batch size (0 = the config's).")
    flags.DEFINE_integer("window", 10, "Micro-turns per example (0 = the config's).")
    flags.DEFINE_string("out", "experiments/perf/results/train_throughput.json", "JSON output.")

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def config_path_and_overrides(entry: str) -> tuple[str, list[str]]:
    """`small` -> configs/small.py; `path/to/config.py@a=1+b=2` -> (that path, ["a=1", "b=2"])."""
    base, _, extra = entry.partition("@")
    path = base if base.endswith(".py") else os.path.join(REPO, "configs", f"{base}.py")
    if not os.path.isfile(path):
        from interaction_jax.errors import UserError

        raise UserError(f"--configs={entry}: no config file {path} (expected a name under configs/ or a .py path)")
    return path, [o for o in extra.split("+") if o]


def bench(name: str, peak: float) -> dict:
    from interaction_jax.config_lib import load_config
    from interaction_jax.data.pipeline import make_iterator
    from interaction_jax.model.interaction_model import dummy_batch
    from interaction_jax.parallel import make_mesh
    from interaction_jax.summary import count_params
    from interaction_jax.train.mfu import transformer_train_flops_per_token
    from interaction_jax.train.state import create_train_state
    from interaction_jax.train.step import make_train_step, to_global_batch

    overrides = ["train.warmup_steps=1"]
    if FLAGS.batch_size:
        overrides.append(f"data.batch_size={FLAGS.batch_size}")
    if FLAGS.window:
        overrides.append(f"data.window_micro_turns={FLAGS.window}")
    if "moe" in name:
        overrides.append("model.moe.impl=ragged_dot")
    path, extra = config_path_and_overrides(name)
    cfg = load_config(path, overrides + extra)
    mesh = make_mesh({"data": -1})
    setup, state = create_train_state(cfg, mesh)
    step = make_train_step(cfg, setup)
    B, W = int(cfg.data.batch_size), int(cfg.data.window_micro_turns)
    batch = to_global_batch({k: np.asarray(v) for k, v in dummy_batch(cfg, B, W).items()}, setup)
    t0 = time.perf_counter()
    state, m = step(state, batch)
    jax.block_until_ready(m)
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(FLAGS.steps):
        t0 = time.perf_counter()
        state, m = step(state, batch)
        jax.block_until_ready(m)
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    total, active = count_params(cfg)
    seq = int(batch["kinds"].shape[1])
    m_ = cfg.model
    fpt = transformer_train_flops_per_token(active, int(m_.num_layers), seq, int(m_.num_heads) * int(m_.head_dim))
    tokens = B * seq
    flops = fpt * tokens / med
    # data pipeline delivery rate on synthetic episodes with cached features (after warm-up)
    from interaction_jax.data.sources import SyntheticSource

    src = SyntheticSource("mix", 8, 50_000, float(cfg.data.episode_seconds), cfg.features)
    it = make_iterator(cfg, src, process_index=0, process_count=1)
    for _ in range(8):
        next(it)  # renders every episode once (cached afterwards)
    t0 = time.perf_counter()
    n = 10
    for _ in range(n):
        next(it)
    data_rate = n / (time.perf_counter() - t0)
    return {
        "config": name,
        "params": total,
        "active_params": active,
        "batch": B,
        "window_micro_turns": W,
        "tokens_per_step": tokens,
        "compile_s": compile_s,
        "step_s_median": med,
        "tokens_per_s": tokens / med,
        # seconds of episode trained per second (a lower video rate has fewer tokens per micro-turn)
        "episode_seconds_per_s": B * W * float(cfg.layout.micro_turn_ms) / 1000.0 / med,
        "model_flops_per_s": flops,
        "mfu": flops / (peak * jax.device_count()),
        "data_batches_per_s": data_rate,
        "step_batches_per_s": 1.0 / med,
        "data_over_step": data_rate * med,
    }


def main(argv):
    del argv
    from interaction_jax.train.mfu import device_peak_flops

    peak, how = device_peak_flops()
    print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()}, peak {peak / 1e9:.1f} GFLOP/s ({how})")
    rows = [bench(name, peak) for name in FLAGS.configs]
    # Probe again at the end and keep the higher reading: a busy moment at start-up must not
    # inflate MFU. All rows are re-expressed against that peak.
    peak_end, _ = device_peak_flops()
    if peak_end > peak:
        for r in rows:
            r["mfu"] = r["model_flops_per_s"] / (peak_end * jax.device_count())
        peak = peak_end
    print(f"peak used for MFU: {peak / 1e9:.1f} GFLOP/s (max of the start and end probes)")
    w = max([10] + [len(r["config"]) for r in rows])
    hdr = f"{'config':{w}s} {'params':>8s} {'tok/step':>8s} {'step s':>8s} {'tok/s':>9s} {'GFLOP/s':>8s} {'MFU':>6s}"
    print(hdr + f" {'data b/s':>9s} {'step b/s':>9s} {'data/step':>9s}")
    for r in rows:
        print(
            f"{r['config']:{w}s} {r['params'] / 1e6:7.1f}M {r['tokens_per_step']:8d} {r['step_s_median']:8.3f} "
            f"{r['tokens_per_s']:9.0f} {r['model_flops_per_s'] / 1e9:8.2f} {100 * r['mfu']:5.1f}% "
            f"{r['data_batches_per_s']:9.1f} {r['step_batches_per_s']:9.2f} {r['data_over_step']:8.0f}x"
        )
    from interaction_jax.results_io import write_record

    write_record(FLAGS.out, {"device": jax.devices()[0].device_kind, "peak_flops": peak, "peak_source": how,
                             "rows": rows})


if __name__ == "__main__":
    from interaction_jax.cli import run as run_cli

    run_cli(main, define_flags=_define_flags)
