"""Inspect a prepared data set: statistics, and one packed window rendered as a PNG timeline.

    python -m interaction_jax.data.inspect DIR [--config=configs/tiny.py] [--png=window.png]
"""

from __future__ import annotations

import collections
import json
import os

import numpy as np
from absl import app, flags

from interaction_jax import cli

FLAGS = flags.FLAGS


def _define_flags() -> None:
    """Command-line flags (defined only when run as a program, so importing never clashes)."""
    cli.DEFINE_config("config", "Config file (layout/features), e.g. configs/tiny.py.")
    flags.DEFINE_string("png", "", "Where to write the window picture (default <DIR name>_window.png here).")
    flags.DEFINE_integer("episode", 0, "Which episode to render.", lower_bound=0)
    flags.DEFINE_integer("start", 0, "First micro-turn of the rendered window.", lower_bound=0)


def dataset_stats(source) -> dict:
    """Counts and durations by task, words per speaker, delegations, video share."""
    tasks = collections.Counter()
    dur, words_u, words_m, video, bg = [], 0, 0, 0, 0
    for i in range(len(source)):
        rec = source[i]
        ep = rec[0] if isinstance(rec, tuple) else rec
        tasks[ep.task or "?"] += 1
        dur.append(ep.duration)
        words_u += len(ep.user_words)
        words_m += len(ep.model_words)
        video += bool(ep.video)
        bg += sum(e.kind == "request" for e in ep.background)
    return {
        "episodes": len(source),
        "hours": float(np.sum(dur) / 3600.0),
        "mean_seconds": float(np.mean(dur)) if dur else 0.0,
        "by_task": dict(sorted(tasks.items())),
        "user_words": words_u,
        "model_words": words_m,
        "episodes_with_video": video,
        "delegations": bg,
    }


def render_window(config, source, index: int, start: int, path: str) -> str:
    from interaction_jax.data.pipeline import ToGrid
    from interaction_jax.streams.layout import StreamLayout
    from interaction_jax.streams.pack import pack_window
    from interaction_jax.streams.plot import plot_window
    from interaction_jax.streams.tokenizer import make_tokenizer

    layout = StreamLayout.from_config(config)
    rec = source[index]  # read (or render) the episode once
    grid = ToGrid.from_config(config, layout).map(rec)
    window = pack_window(grid, min(start, max(0, grid.num_turns - 1)), config.data.window_micro_turns)
    ep = rec[0] if isinstance(rec, tuple) else rec
    return plot_window(window, layout, make_tokenizer(config.text), path, title=f"{ep.episode_id} ({ep.task})")


def main(argv):
    if len(argv) != 2:
        raise app.UsageError("usage: python -m interaction_jax.data.inspect DIR [--config=...]")
    from interaction_jax.data.store import open_store

    directory = argv[1]
    config = FLAGS.config
    if config is None:
        from interaction_jax.config_lib import base_config

        config = base_config()
    store = open_store(directory)
    if FLAGS.episode >= len(store):
        raise cli.UserError(f"--episode={FLAGS.episode}: the store {directory} holds {len(store)} episodes "
                            f"(expected 0..{len(store) - 1})")
    path = FLAGS.png or f"{os.path.basename(os.path.normpath(directory))}_window.png"
    if os.path.dirname(os.path.abspath(path)) and not os.path.isdir(os.path.dirname(os.path.abspath(path))):
        raise cli.UserError(f"--png={path}: folder {os.path.dirname(os.path.abspath(path))} does not exist")
    print(json.dumps(dataset_stats(store), indent=2))
    print("window picture:", render_window(config, store, FLAGS.episode, FLAGS.start, path))


if __name__ == "__main__":
    cli.run(main, name="inspect", define_flags=_define_flags)
