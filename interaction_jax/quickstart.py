"""`make quickstart`: the main job end to end on a small default.

    python -m interaction_jax.quickstart --config=configs/tiny.py --workdir=runs/quickstart

1. prepares a small synthetic data set (train + held-out) with the config's sizes,
2. builds the Grain pipeline, prints what a batch looks like and renders a packed window,
3. trains the config for `--train_steps` steps on CPU (a few minutes for tiny), with
   TensorBoard logs and Orbax checkpoints in the workdir (re-running resumes),
4. evaluates the checkpoint on `--eval_examples` held-out episodes per task through the
   streaming engine (TimeSpeak, CueSpeak, FD-style), beside the turn-based baseline and the
   episodes' own targets, and prints the table (workdir/eval: results.json, timelines),
5. streams one session through the engine (workdir/stream: model.wav, transcript, timeline).
"""

from __future__ import annotations

import os
import time

import numpy as np
from absl import app, flags

from interaction_jax import cli

FLAGS = flags.FLAGS


def _define_flags() -> None:
    """Command-line flags (defined only when run as a program, so importing never clashes)."""
    cli.DEFINE_config("config", "Config file, e.g. configs/quickstart.py.")
    flags.DEFINE_string("workdir", "runs/quickstart", "Where data, logs and pictures go.")
    flags.DEFINE_bool("overwrite_data", False, "Re-render the data sets even if they exist.")
    flags.DEFINE_integer("train_steps", 300, "Training steps (0 = data only).", lower_bound=0)
    flags.DEFINE_integer("eval_examples", 16, "Held-out episodes per benchmark task after training (0 = skip).",
                         lower_bound=0)


def describe_batch(batch: dict, layout) -> str:
    from interaction_jax.streams.layout import Kind

    lines = [f"{'key':16s} {'shape':24s} dtype     summary"]
    for k, v in batch.items():
        v = np.asarray(v)
        if v.size == 0:
            summ = "empty (stream off in this config)"
        elif v.dtype == np.bool_ or k.endswith("mask"):
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


def run(config, workdir: str, overwrite_data: bool = False, train_steps: int = 0, eval_examples: int = 0) -> dict:
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
    result = {"train_dir": train_dir, "eval_dir": eval_dir, "stats": stats, "png": png}
    if train_steps > 0:
        result["train"] = train(config, workdir, train_dir, eval_dir, train_steps)
        if eval_examples > 0:
            result["eval"] = evaluate_and_stream(config, workdir, result["train"]["run_dir"], eval_examples)
    return result


def evaluate_and_stream(config, workdir: str, run_dir: str, examples: int) -> dict:
    """Stages 4 and 5: the benchmark table for the checkpoint, then one streamed session."""
    import importlib.util

    from interaction_jax.evaluate import evaluate
    from interaction_jax.stream import StreamOptions
    from interaction_jax.stream import run as stream_run

    baseline = importlib.util.find_spec("interaction_jax.eval.baseline") is not None
    print(f"[quickstart] evaluating {run_dir} on {examples} held-out episodes per task (through the streaming engine)")
    res = evaluate(config, workdir=run_dir, init="checkpoint", benchmarks=["fd"], num_examples=examples,
                   out_dir=os.path.join(workdir, "eval"), baseline=baseline, oracle=True, plot=True,
                   instruction_mode="spoken")
    out = os.path.join(workdir, "stream")
    summary = stream_run(config, out, StreamOptions(workdir=run_dir, task="turntaking", seconds=6.0))
    print(f"[quickstart] streamed one 6 s session: step median {summary['step_latency_ms']['median']:.1f} ms "
          f"(RTF {summary['real_time_factor']:.2f}); wrote {out}/model.wav, transcript.json, timeline.png")
    print("[quickstart] benchmark table (also in " + os.path.join(workdir, "eval", "results.json") + "):")
    print(res["table"])
    from interaction_jax.eval.benchmarks import turn_taking_verdict

    verdict = turn_taking_verdict(res["metrics"])
    if verdict:
        print("[quickstart] " + verdict)
    return {"table": res["table"], "stream": summary, "verdict": verdict}


def train(config, workdir: str, train_dir: str, eval_dir: str, steps: int) -> dict:
    from interaction_jax.train.trainer import Trainer

    cfg = config.copy_and_resolve_references()
    with cfg.unlocked():
        cfg.data.data_dir, cfg.data.eval_data_dir = train_dir, eval_dir
        cfg.train.num_steps = steps
        cfg.train.warmup_steps = min(int(cfg.train.warmup_steps), max(1, steps // 10))
        cfg.train.eval_every = max(1, steps // 3)
        cfg.train.checkpoint_every = max(1, steps // 3)
    run_dir = os.path.join(workdir, "run")
    print(f"[quickstart] training {steps} steps -> {run_dir}")
    result = Trainer(cfg, run_dir).run()
    if not result.history:  # re-run on a finished workdir: nothing left to train
        print(f"[quickstart] {run_dir} is already trained to step {result.step} (>= {steps}); not training")
        return {"run_dir": run_dir, "first_loss": None, "last_loss": None}
    first, last = result.history[0], result.history[-1]
    print(f"[quickstart] loss {first['loss']:.3f} -> {last['loss']:.3f} "
          f"(text {first['text_loss']:.3f} -> {last['text_loss']:.3f}, "
          f"audio {first['audio_loss']:.3f} -> {last['audio_loss']:.3f})")
    if result.eval_history:
        print(f"[quickstart] held-out loss at step {result.eval_history[-1]['step']}: "
              f"{result.eval_history[-1]['loss']:.3f}")
    print(f"[quickstart] checkpoints: {run_dir}/checkpoints   TensorBoard: tensorboard --logdir {run_dir}/tb")
    return {"run_dir": run_dir, "first_loss": first["loss"], "last_loss": last["loss"]}


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}: quickstart takes only flags")
    config = FLAGS.config
    if config is None:
        raise app.UsageError("--config is required (e.g. --config=configs/tiny.py)")
    if os.path.exists(FLAGS.workdir) and not os.path.isdir(FLAGS.workdir):
        raise cli.UserError(f"--workdir={FLAGS.workdir} is a file; expected a folder (new or earlier quickstart)")
    run(config, FLAGS.workdir, FLAGS.overwrite_data, FLAGS.train_steps, FLAGS.eval_examples)


if __name__ == "__main__":
    cli.run(main, name="quickstart", define_flags=_define_flags)
