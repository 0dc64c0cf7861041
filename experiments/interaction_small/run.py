"""The reproduction experiment end to end: one model on the task mix, evaluated through live sessions.

    make reproduce      # = python experiments/interaction_small/run.py --workdir=runs/interaction_small
    python experiments/interaction_small/run.py --workdir=runs/interaction_small \
        [--stages=prepare,train,select,evaluate,curve,report] [--num_examples=50] [--config.train.num_steps=...]

Stages (each resumable: re-running skips what is done, pass --redo=STAGE to redo one):

1. prepare: renders the training mix and a held-out-loss set (`data.prepare`, all cores).
2. train: `config.py` (the recipe is in its docstring).
3. select: decoding settings (`--temperatures` x `--self_audios`, top-p 0.95) tried on the
   *validation* seed range; the best by the mean of the headline rates is used for every later
   stage. `--self_audios` (default: the generated voice only) is what the model hears of its own
   voice while served: its generated voice, or silence (the muted condition `train.self_audio_dropout`
   trains half of the windows in); `--self_audios=generated,silence` tries both.
4. evaluate: the *test* seed range, `--num_examples` episodes per task, through the streaming
   `Scheduler` (200 ms chunks, the model hearing its own voice as selected): TimeSpeak, CueSpeak
   and delegation with typed instructions (the headline) and with spoken ones, FD-style tasks
   (interruption/backchannel, talking to others/background speech, turn-taking) with the tasks'
   own mix of typed and spoken instructions, each with the turn-based cascade and the oracle
   beside it; delegation again with a live background hub (`experiments/delegation/run.py`: the
   calculator computes each result from the model's own request).
5. curve: every `--curve_every` steps' checkpoint on the validation range (`--curve_examples`).
6. report: `results.json` (committed) and `results.md` + `figures/` generated from it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from absl import app, flags
from ml_collections import config_flags

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
import report as report_lib  # noqa: E402  (experiments/interaction_small/report.py)

STAGES = ("prepare", "train", "select", "evaluate", "curve", "report")
SELF_AUDIOS = ("generated", "silence")  # config_lib's choices of inference.self_audio
FLAGS = flags.FLAGS


def _define_flags() -> None:
    """Defined when run as a script, not on import (tests import this module in-process)."""
    config_flags.DEFINE_config_file("config", os.path.join(HERE, "config.py"), "Experiment config.", lock_config=True)
    flags.DEFINE_string("workdir", "runs/interaction_small", "Data, run and evaluation outputs.")
    flags.DEFINE_list("stages", list(STAGES), "Stages to run, in order.")
    flags.DEFINE_list("redo", [], "Stages whose saved outputs are recomputed.")
    flags.DEFINE_integer("num_examples", 50, "Test episodes per benchmark task.")
    flags.DEFINE_integer("select_examples", 8, "Validation episodes per task for choosing the decoding settings.")
    flags.DEFINE_list("temperatures", ["0.3", "0.7"], "Sampling temperatures tried on the validation range.")
    flags.DEFINE_list("self_audios", ["generated"], "What the served model hears of its own voice "
                      "(inference.self_audio: generated, silence), tried on the validation range with every "
                      "temperature.")
    flags.DEFINE_integer("curve_every", 500, "Learning curve: evaluate every N steps' checkpoint (0 = off).")
    flags.DEFINE_integer("curve_examples", 8, "Learning curve: validation episodes per task and checkpoint.")
    flags.DEFINE_string("results", os.path.join(HERE, "results.json"),
                        "Where the results JSON goes (results.md beside).")

# Instructions typed where content must be copied (the headline), spoken for the same episodes.
CONTENT_TASKS = ("timespeak", "cuespeak", "delegation")
DELEGATION_TEST_SEED, DELEGATION_VALIDATION_SEED = 3_100_000, 3_000_000


def _json(path: str) -> dict | None:
    return json.load(open(path)) if os.path.exists(path) else None


def _write_json(path: str, obj) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)


def _done(path: str, stage: str) -> bool:
    if os.path.exists(path) and stage not in FLAGS.redo:
        print(f"[experiment] {path} exists (pass --redo={stage} to recompute it)")
        return True
    return False


def _with_decoding(config, temperature: float, self_audio: str):
    c = config.copy_and_resolve_references()
    with c.unlocked():
        c.inference.temperature = float(temperature)
        c.inference.self_audio = str(self_audio)
    return c


def _select_dir(workdir: str, temperature: str, self_audio: str) -> str:
    """Where one validation candidate's evaluations go (the generated-voice ones keep their older names)."""
    tag = f"select_t{temperature}" if self_audio == "generated" else f"select_t{temperature}_{self_audio}"
    return os.path.join(workdir, "eval", tag)


def stage_prepare(config, workdir: str) -> None:
    from interaction_jax.data import prepare as prep

    d = config.data
    for path, n, seed in ((d.data_dir, d.num_episodes, d.seed), (d.eval_data_dir, d.eval_num_episodes, d.eval_seed)):
        if os.path.exists(os.path.join(path, "manifest.json")):
            print(f"[experiment] data set {path} exists")
            continue
        print(f"[experiment] rendering {n} '{d.task}' episodes of {d.episode_seconds:.0f} s (seed {seed}) -> {path}")
        prep.prepare(path, task=d.task, num_episodes=n, seed=seed, episode_seconds=d.episode_seconds,
                     workers=min(8, os.cpu_count() or 1))


def stage_train(config, workdir: str) -> None:
    from interaction_jax.train.trainer import Trainer

    result = Trainer(config, os.path.join(workdir, "run")).run()
    want = int(config.train.num_steps)
    if result.step < want:  # stopped by a signal: the checkpoint is saved; evaluating it would be wrong
        print(f"[experiment] training stopped at step {result.step} of {want}; run the same command again "
              "to resume", flush=True)
        raise SystemExit(1)
    print(f"[experiment] training finished at step {result.step}")


def run_benchmarks(config, workdir: str, out_dir: str, *, split: str, num: int, typed_content: bool = True,
                   spoken_content: bool = True, cascade: bool = True, step: int | None = None) -> dict:
    """The evaluate passes of one checkpoint: content tasks typed and/or spoken, FD-style tasks mixed."""
    from interaction_jax.evaluate import evaluate

    out = {}
    passes = []
    if typed_content:
        passes.append(("typed", ["timespeak", "cuespeak", "fd", "delegation"], "typed"))
    if spoken_content:
        passes.append(("spoken", ["timespeak", "cuespeak", "delegation"], "spoken"))
    for name, benchmarks, mode in passes:
        modes = {t: mode for t in CONTENT_TASKS}  # FD-style tasks keep their mix of typed and spoken
        res = evaluate(config, workdir=os.path.join(workdir, "run"), init="checkpoint", benchmarks=benchmarks,
                       num_examples=num, out_dir=os.path.join(out_dir, name), baseline=cascade, oracle=cascade,
                       plot=cascade and split == "test", split=split, instruction_mode=modes, step=step)
        out[name] = {k: res[k] for k in ("metrics", "metrics_by_mode", "num_examples", "split", "instruction_mode",
                                         "temperature", "top_p", "self_audio", "model_seconds", "slots",
                                         "episode_seconds")}
        out[name]["plots"] = [os.path.relpath(p, out_dir) for p in res.get("plots", [])]
    return out


def run_live_delegation(workdir: str, out: str, *, task: str, seed: int, num: int, temperature: float,
                        self_audio: str, plot_dir: str = "") -> dict:
    """experiments/delegation/run.py in a subprocess: a live hub, results computed from the model's requests."""
    overrides = [a for a in sys.argv[1:] if a.startswith("--config.") and "inference.temperature" not in a
                 and "inference.self_audio" not in a]
    cmd = [sys.executable, os.path.join(ROOT, "experiments", "delegation", "run.py"),
           f"--config={config_flags.get_config_filename(FLAGS['config'])}", *overrides,
           f"--workdir={os.path.join(workdir, 'run')}",
           f"--task={task}", f"--num_examples={num}", f"--seed={seed}", f"--out={out}",
           f"--config.inference.temperature={temperature}", f"--config.inference.self_audio={self_audio}"]
    if plot_dir:
        cmd += [f"--plot_dir={plot_dir}", "--num_plots=2"]
    print("[experiment] " + " ".join(cmd[1:]), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)
    return json.load(open(out))["summary"]


def stage_select(config, workdir: str) -> dict:
    path = os.path.join(workdir, "eval", "select.json")
    if _done(path, "select"):
        return _json(path)
    rows = []
    for sa in FLAGS.self_audios:
        for t in FLAGS.temperatures:
            cfg = _with_decoding(config, float(t), sa)
            d = _select_dir(workdir, t, sa)
            res = run_benchmarks(cfg, workdir, d, split="validation", num=FLAGS.select_examples,
                                 spoken_content=False, cascade=False)
            deleg = run_live_delegation(workdir, os.path.join(d, "delegation_live.json"), task="delegation_typed",
                                        seed=DELEGATION_VALIDATION_SEED, num=FLAGS.select_examples,
                                        temperature=float(t), self_audio=sa)
            headline = report_lib.headline(res["typed"]["metrics"]["model"], deleg)
            rows.append({"temperature": float(t), "self_audio": sa, "score": report_lib.selection_score(headline),
                         "headline": headline,
                         "headline_scripted": report_lib.headline(res["typed"]["metrics"]["model"], None)})
            print(f"[experiment] validation, temperature {t}, self-audio {sa}: score {rows[-1]['score']:.3f}",
                  flush=True)
    best = max(rows, key=lambda r: r["score"])  # ties keep the first: generated voice, lower temperature
    out = {"candidates": rows, "temperature": best["temperature"], "self_audio": best["self_audio"],
           "top_p": float(config.inference.top_p), "examples_per_task": FLAGS.select_examples,
           "split": "validation", "score": "mean of the headline rates (report.selection_score)"}
    _write_json(path, out)
    print(f"[experiment] chose temperature {best['temperature']}, self-audio {best['self_audio']} on the "
          "validation seeds")
    return out


def stage_evaluate(config, workdir: str, temperature: float, self_audio: str) -> dict:
    path = os.path.join(workdir, "eval", "test.json")
    if _done(path, "evaluate"):
        return _json(path)
    cfg = _with_decoding(config, temperature, self_audio)
    out_dir = os.path.join(workdir, "eval", "test")
    res = run_benchmarks(cfg, workdir, out_dir, split="test", num=FLAGS.num_examples)
    for mode in ("typed", "spoken"):
        res[f"delegation_live_{mode}"] = run_live_delegation(
            workdir, os.path.join(out_dir, f"delegation_live_{mode}.json"), task=f"delegation_{mode}",
            seed=DELEGATION_TEST_SEED, num=FLAGS.num_examples, temperature=temperature, self_audio=self_audio,
            plot_dir=os.path.join(out_dir, "delegation_plots") if mode == "typed" else "")
    _write_json(path, res)
    return res


def stage_curve(config, workdir: str, temperature: float, self_audio: str) -> dict:
    from interaction_jax.train import checkpoint as ckpt

    path = os.path.join(workdir, "eval", "curve.json")
    prev = (_json(path) or {}) if "curve" not in FLAGS.redo else {}
    points = {int(k): v for k, v in prev.get("points", {}).items()}
    manager = ckpt.make_manager(os.path.join(workdir, "run", "checkpoints"), config.train)
    steps = sorted(s for s in manager.all_steps() if FLAGS.curve_every and s % FLAGS.curve_every == 0)
    last = manager.latest_step()
    if last is not None and last not in steps:
        steps.append(last)
    cfg = _with_decoding(config, temperature, self_audio)
    sel = _json(os.path.join(workdir, "eval", "select.json"))
    chosen = next((r for r in (sel or {}).get("candidates", []) if r["temperature"] == temperature
                   and r.get("self_audio", "generated") == self_audio), None)
    if (chosen and last is not None and last not in points and sel["examples_per_task"] == FLAGS.curve_examples
            and "headline_scripted" in chosen):
        points[last] = chosen["headline_scripted"]  # the same episodes, seeds and checkpoint: select ran it
    for step in steps:
        if step in points:
            continue
        print(f"[experiment] learning curve: step {step}", flush=True)
        res = run_benchmarks(cfg, workdir, os.path.join(workdir, "eval", "curve", str(step)), split="validation",
                             num=FLAGS.curve_examples, spoken_content=False, cascade=False, step=step)
        points[step] = report_lib.headline(res["typed"]["metrics"]["model"], None)
        _write_json(path, {"temperature": temperature, "self_audio": self_audio,
                           "examples_per_task": FLAGS.curve_examples,
                           "split": "validation", "points": {str(k): v for k, v in sorted(points.items())}})
    return _json(path) or {}


def _timings(workdir: str) -> dict:
    return _json(os.path.join(workdir, "timings.json")) or {}


def _save_timing(workdir: str, stage: str, seconds: float) -> None:
    t = _timings(workdir)
    # a resumed stage adds to its earlier time; a redone one starts again
    t[stage] = round(seconds if stage in FLAGS.redo else t.get(stage, 0.0) + seconds, 1)
    _write_json(os.path.join(workdir, "timings.json"), t)


def main(argv):
    del argv
    config = FLAGS.config
    workdir = FLAGS.workdir
    unknown = [s for s in [*FLAGS.stages, *FLAGS.redo] if s not in STAGES]
    if unknown:
        raise app.UsageError(f"--stages/--redo: unknown {unknown}; choose from {', '.join(STAGES)}")
    bad = [t for t in FLAGS.temperatures if not t.replace(".", "", 1).isdigit()]
    if bad or FLAGS.num_examples < 1 or FLAGS.select_examples < 1 or FLAGS.curve_examples < 1:
        raise app.UsageError("--temperatures must be numbers >= 0 and the example counts >= 1")
    bad_sa = [s for s in FLAGS.self_audios if s not in SELF_AUDIOS]
    if bad_sa or not FLAGS.self_audios:
        raise app.UsageError(f"--self_audios: got {FLAGS.self_audios}; expected a list of {', '.join(SELF_AUDIOS)}")
    with config.unlocked():
        config.data.data_dir = os.path.join(workdir, "data", "train")
        config.data.eval_data_dir = os.path.join(workdir, "data", "eval")
    os.makedirs(workdir, exist_ok=True)
    temperature, self_audio = float(config.inference.temperature), str(config.inference.self_audio)
    for stage in FLAGS.stages:
        t0 = time.perf_counter()
        print(f"[experiment] stage {stage}", flush=True)
        if stage == "prepare":
            stage_prepare(config, workdir)
        elif stage == "train":
            stage_train(config, workdir)
        elif stage == "select":
            sel = stage_select(config, workdir)
            temperature, self_audio = sel["temperature"], sel.get("self_audio", "generated")
        elif stage in ("evaluate", "curve"):
            sel = _json(os.path.join(workdir, "eval", "select.json"))
            if sel:  # a select.json written before self-audio was selected chose among the generated voice
                temperature, self_audio = sel["temperature"], sel.get("self_audio", "generated")
            (stage_evaluate if stage == "evaluate" else stage_curve)(config, workdir, temperature, self_audio)
        else:
            report_lib.write_report(config, workdir, FLAGS.results, _timings(workdir), " ".join(sys.argv))
            continue
        _save_timing(workdir, stage, time.perf_counter() - t0)


if __name__ == "__main__":
    from interaction_jax.config_lib import check_cli_overrides

    check_cli_overrides(sys.argv)
    from interaction_jax.cli import run as run_cli

    run_cli(main, define_flags=_define_flags)
