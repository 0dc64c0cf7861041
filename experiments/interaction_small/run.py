"""The reproduction experiment end to end: prepare -> train -> evaluate (model, baseline, targets) -> results.md.

    python experiments/interaction_small/run.py [--workdir=runs/interaction_small] [--num_examples=20]
        [--stages=prepare,train,evaluate,report] [--config.train.num_steps=...]

Every stage is resumable and skips work that is already done (a prepared store, a finished
run, existing evaluation results): re-running after an interruption continues where it
stopped. `report` writes `results.md` beside this file from the evaluation JSON and the
TensorBoard logs (table, loss curves, timelines, command, commit, hardware, wall times).
"""

from __future__ import annotations

import json
import os
import sys
import time

from absl import app, flags
from ml_collections import config_flags

HERE = os.path.dirname(os.path.abspath(__file__))
FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", os.path.join(HERE, "config.py"), "Experiment config.", lock_config=True)
flags.DEFINE_string("workdir", "runs/interaction_small", "Data, run and evaluation outputs.")
flags.DEFINE_list("stages", ["prepare", "train", "evaluate", "report"], "Stages to run, in order.")
flags.DEFINE_integer("num_examples", 20, "Held-out episodes per benchmark task.")
flags.DEFINE_bool("reevaluate", False, "Redo the evaluation even if results exist.")
flags.DEFINE_string("results", os.path.join(HERE, "results.md"), "Where the report goes.")


def _timings(workdir: str) -> dict:
    path = os.path.join(workdir, "timings.json")
    return json.load(open(path)) if os.path.exists(path) else {}


def _save_timing(workdir: str, stage: str, seconds: float) -> None:
    t = _timings(workdir)
    wall = train_wall_seconds(os.path.join(workdir, "run", "tb"))
    if wall is not None:
        t["train (first to last logged step)"] = round(wall, 1)
    t[stage] = round(seconds, 1)
    tmp = os.path.join(workdir, "timings.json.tmp")
    with open(tmp, "w") as f:
        json.dump(t, f, indent=1)
    os.replace(tmp, os.path.join(workdir, "timings.json"))


def stage_prepare(config, workdir: str) -> None:
    from interaction_jax.data import prepare as prep

    d = config.data
    for path, n, seed in ((d.data_dir, d.num_episodes, d.seed), (d.eval_data_dir, d.eval_num_episodes, d.eval_seed)):
        if os.path.exists(os.path.join(path, "manifest.json")):
            print(f"[experiment] data set {path} exists")
            continue
        print(f"[experiment] rendering {n} '{d.task}' episodes of {d.episode_seconds:.0f} s (seed {seed}) -> {path}")
        prep.prepare(path, task=d.task, num_episodes=n, seed=seed, episode_seconds=d.episode_seconds)


def stage_train(config, workdir: str) -> None:
    from interaction_jax.train.trainer import Trainer

    result = Trainer(config, os.path.join(workdir, "run")).run()
    print(f"[experiment] training finished at step {result.step}")


def stage_evaluate(config, workdir: str, num_examples: int) -> None:
    from interaction_jax.evaluate import evaluate

    if os.path.exists(os.path.join(workdir, "eval", "results.json")) and not FLAGS.reevaluate:
        print(f"[experiment] {workdir}/eval/results.json exists (pass --reevaluate to redo it)")
        return
    evaluate(config, workdir=os.path.join(workdir, "run"), init="checkpoint",
             benchmarks=["timespeak", "cuespeak", "fd", "delegation"], num_examples=num_examples,
             out_dir=os.path.join(workdir, "eval"), baseline=True, oracle=True, plot=True)


def train_wall_seconds(tb: str) -> float | None:
    """Seconds between the first and last training summary (from the TensorBoard event times)."""
    import glob

    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    times = [ev.wall_time for path in sorted(glob.glob(f"{tb}/events.out.tfevents.*"))
             for ev in EventFileLoader(path).Load() if any(v.tag == "loss" for v in ev.summary.value)]
    return max(times) - min(times) if len(times) > 1 else None


def _loss_plot(tb: str, path: str) -> str | None:
    from interaction_jax.train.metrics import read_scalars

    s = read_scalars(tb)
    if "loss" not in s:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.2))
    for tag, style in (("text_loss", "-"), ("audio_loss", "-"), ("eval/text_loss", "o--"), ("eval/audio_loss", "o--")):
        if tag in s:
            steps, vals = zip(*s[tag], strict=True)
            ax.plot(steps, vals, style, label=tag, ms=4)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def stage_report(config, workdir: str, out: str) -> str:
    """Writes results.md (and its PNGs beside it) from the evaluation results and training logs."""
    from interaction_jax.eval import benchmarks as bm
    from interaction_jax.eval.plots import plot_best_worst
    from interaction_jax.summary import count_params
    from interaction_jax.train.metrics import read_scalars

    res_path = os.path.join(workdir, "eval", "results.json")
    if not os.path.exists(res_path):
        raise FileNotFoundError(f"{res_path}: run the evaluate stage first")
    res = json.load(open(res_path))
    fig_dir = os.path.join(os.path.dirname(out), "figures")
    os.makedirs(fig_dir, exist_ok=True)
    loss_png = _loss_plot(os.path.join(workdir, "run", "tb"), os.path.join(fig_dir, "loss.png"))
    figs = [os.path.basename(p) for p in plot_best_worst(res, fig_dir)]
    s = read_scalars(os.path.join(workdir, "run", "tb"))
    last = {k: v[-1] for k, v in s.items() if v}
    total, active = count_params(config)
    t = _timings(workdir)
    wall = train_wall_seconds(os.path.join(workdir, "run", "tb"))
    if wall is not None:
        t["train (first to last logged step)"] = round(wall, 1)
    lines = [
        "# interaction_small: results",
        "",
        "Generated by `python experiments/interaction_small/run.py --stages=report` from",
        f"`{res_path}` — commit `{res['commit']}`.",
        "",
        f"* model: {total:,} parameters ({active:,} active); config `experiments/interaction_small/config.py`",
        f"* training: {last.get('loss', (0, 0))[0]} steps of {config.data.batch_size} x "
        f"{config.data.window_micro_turns} micro-turns; final train loss {last.get('loss', (0, float('nan')))[1]:.3f}"
        + (f", held-out loss {last['eval/loss'][1]:.3f}" if "eval/loss" in last else ""),
        f"* wall time (s): {json.dumps(t) if t else 'see README'}",
        f"* evaluation: {res['num_examples']} held-out episodes per task, {res['episode_seconds']:.0f} s each, "
        f"{res['slots']} sessions per engine tick; model pass {res['model_seconds']:.0f} s",
        f"* hardware: {res['hardware']['cpu_count']} CPUs ({res['hardware']['processor']}), "
        f"JAX backend {res['hardware']['jax_backend']}, {res['hardware']['platform']}",
        "",
        "## Benchmarks",
        "",
        "```",
        bm.table(res["metrics"]),
        "```",
        "",
    ]
    if loss_png:
        lines += ["## Training curves", "", "![loss](figures/loss.png)", ""]
    if figs:
        lines += ["## Timelines (best / worst model example per benchmark)", ""]
        lines += [f"![{f}](figures/{f})" for f in figs]
        lines.append("")
    tmp = out + ".tmp"
    with open(tmp, "w") as f:
        f.write("\n".join(lines))
    os.replace(tmp, out)
    print(f"[experiment] wrote {out}")
    return out


def main(argv):
    del argv
    config = FLAGS.config
    workdir = FLAGS.workdir
    with config.unlocked():
        config.data.data_dir = os.path.join(workdir, "data", "train")
        config.data.eval_data_dir = os.path.join(workdir, "data", "eval")
    os.makedirs(workdir, exist_ok=True)
    unknown = [s for s in FLAGS.stages if s not in ("prepare", "train", "evaluate", "report")]
    if unknown:
        raise app.UsageError(f"--stages: unknown {unknown}; choose from prepare, train, evaluate, report")
    for stage in FLAGS.stages:
        t0 = time.perf_counter()
        print(f"[experiment] stage {stage}", flush=True)
        if stage == "prepare":
            stage_prepare(config, workdir)
        elif stage == "train":
            stage_train(config, workdir)
        elif stage == "evaluate":
            stage_evaluate(config, workdir, FLAGS.num_examples)
        else:
            stage_report(config, workdir, FLAGS.results)
            continue
        _save_timing(workdir, stage, time.perf_counter() - t0)


if __name__ == "__main__":
    from interaction_jax.config_lib import check_cli_overrides

    check_cli_overrides(sys.argv)
    app.run(main)
