"""`make quickstart`: the main job end to end on a small default.

    python -m interaction_jax.quickstart --config=configs/tiny.py --workdir=runs/quickstart

Prepares a small synthetic data set (train + held-out) with the config's sizes, builds the
Grain pipeline, prints what a batch looks like and renders one packed window to PNG.
"""

from __future__ import annotations

import os
import time

import numpy as np
from absl import app, flags
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=True)
flags.DEFINE_string("workdir", "runs/quickstart", "Where data, logs and pictures go.")
flags.DEFINE_bool("overwrite_data", False, "Re-render the data sets even if they exist.")


def describe_batch(batch: dict, layout) -> str:
    from interaction_jax.streams.layout import Kind

    lines = [f"{'key':16s} {'shape':24s} dtype     summary"]
    for k, v in batch.items():
        v = np.asarray(v)
        if v.dtype == np.bool_ or k.endswith("mask"):
            summ = f"{float(v.mean()):.3f} set"
        elif np.issubdtype(v.dtype, np.integer):
            summ = f"min {v.min()} max {v.max()}"
        else:
            summ = f"mean {v.mean():.3f} std {v.std():.3f}"
        lines.append(f"{k:16s} {str(v.shape):24s} {str(v.dtype):9s} {summ}")
    kinds = batch["kinds"][0]
    per = {k.name: int((kinds == k).sum()) for k in Kind}
    lines.append(f"positions per window by kind: {per} (positions per micro-turn: {layout.positions_per_turn})")
    return "\n".join(lines)


def run(config, workdir: str, overwrite_data: bool = False) -> dict:
    from interaction_jax.data import prepare as prep
    from interaction_jax.data.inspect import dataset_stats, render_window
    from interaction_jax.data.pipeline import make_iterator
    from interaction_jax.data.store import open_store
    from interaction_jax.streams.layout import StreamLayout

    os.makedirs(workdir, exist_ok=True)
    d = config.data
    train_dir, eval_dir = os.path.join(workdir, "data", "train"), os.path.join(workdir, "data", "eval")
    for path, n, seed in ((train_dir, d.num_episodes, d.seed), (eval_dir, d.eval_num_episodes, d.eval_seed)):
        if overwrite_data or not os.path.exists(os.path.join(path, "manifest.json")):
            print(f"[quickstart] rendering {n} '{d.task}' episodes of {d.episode_seconds}s (seed {seed}) -> {path}")
            prep.prepare(path, task=d.task, num_episodes=n, seed=seed, episode_seconds=d.episode_seconds,
                         overwrite=overwrite_data)
        else:
            print(f"[quickstart] using existing data set {path}")
    store = open_store(train_dir)
    stats = dataset_stats(store)
    print("[quickstart] train set:", stats)
    layout = StreamLayout.from_config(config)
    t0 = time.time()
    it = make_iterator(config, store, process_index=0, process_count=1)
    batch = next(it)
    print(f"[quickstart] first batch in {time.time() - t0:.2f}s:")
    print(describe_batch(batch, layout))
    png = render_window(config, store, 0, 0, os.path.join(workdir, "window.png"))
    print(f"[quickstart] packed window picture: {png}")
    return {"train_dir": train_dir, "eval_dir": eval_dir, "stats": stats, "png": png}


def main(argv):
    del argv
    config = FLAGS.config
    if config is None:
        raise app.UsageError("--config is required (e.g. --config=configs/tiny.py)")
    run(config, FLAGS.workdir, FLAGS.overwrite_data)


if __name__ == "__main__":
    app.run(main)
