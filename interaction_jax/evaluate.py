"""Interaction benchmarks for a checkpoint: `python -m interaction_jax.evaluate`.

    python -m interaction_jax.evaluate --config=configs/tiny.py --workdir=runs/tiny \
        --benchmarks=timespeak,cuespeak,fd --num_examples=20 [--baseline] [--oracle] [--plot]
    python -m interaction_jax.evaluate --config=... --workdir=... --export_fdb=OUT [--fdb_input=DIR | --oracle]

Held-out episodes (seeds disjoint from training, `eval/episodes.py`) run through the streaming
engine as live sessions (`eval/runner.py`), graded on the model's time-stamped text stream
(`eval/grading.py`, `eval/benchmarks.py`). `--baseline` adds the turn-based VAD cascade,
`--oracle` the episodes' own target behaviour (the ceiling every metric can reach). The fd
benchmark also times the interruption stop and the turn-taking response from voice activity on
each system's own waveform (the model's Griffin-Lim audio, the oracle's target recording;
`_audio` keys, docs/evaluation.md); its headline rows stay on the text stream. Writes
`results.json` (metrics, per-example window results, system outputs, commit, hardware) to
`--out` (default WORKDIR/eval), prints a table; `--plot` adds timelines of the best and worst
examples of each benchmark and a TimeSpeak timing-error histogram.
"""

from __future__ import annotations

import json
import os
import time

from absl import app, flags

from interaction_jax import cli
from interaction_jax.errors import UserError
from interaction_jax.results_io import commit, hardware

FLAGS = flags.FLAGS


def _define_flags() -> None:
    """Command-line flags (defined only when run as a program, so importing `evaluate` never clashes)."""
    cli.DEFINE_config("config", "Config of the checkpoint (default: WORKDIR/config.json, which the trainer writes, "
                      "else configs/tiny.py).")
    flags.DEFINE_string("workdir", None, "Training run directory (parameters from its newest checkpoint).")
    flags.DEFINE_enum("init", "checkpoint", ["checkpoint", "random"], "Parameters: checkpoint or random init.")
    flags.DEFINE_list("benchmarks", ["timespeak", "cuespeak", "fd"],
                      "timespeak, cuespeak, fd, delegation, refusal, visual.")
    flags.DEFINE_integer("num_examples", 20, "Episodes per task (fd has three tasks).", lower_bound=1)
    flags.DEFINE_float("episode_seconds", 0.0, "Episode length (0 = config.data.episode_seconds).", lower_bound=0.0)
    flags.DEFINE_bool("baseline", False, "Also evaluate the turn-based VAD cascade.")
    flags.DEFINE_bool("oracle", False, "Also grade the episodes' own target behaviour (with --export_fdb: export "
                      "the targets instead of the model).")
    flags.DEFINE_bool("plot", False, "Timelines of the best and worst examples per benchmark.")
    flags.DEFINE_string("out", None, "Output directory (default WORKDIR/eval or eval_out).")
    flags.DEFINE_integer("seed", 0, "Base seed of the sessions' sampling keys.")
    flags.DEFINE_enum("split", "test", ["test", "validation"], "Benchmark seed range: report on 'test', choose "
                      "decoding settings on 'validation' (disjoint).")
    flags.DEFINE_enum("instruction_mode", "mixed", ["mixed", "typed", "spoken"], "How instructions reach the "
                      "model: the tasks' own mix of typed and spoken, or every one typed / spoken.")
    flags.DEFINE_enum("scene", "default", ["default", "clean"], "Visual tasks' frames: as trained by default, or "
                      "'clean' (same seeds and content, still camera, no noise or flicker: the `_clean` variants).")
    flags.DEFINE_integer("slots", 0, "Concurrent sessions per engine tick (0 = config.inference.slots).",
                         lower_bound=0)
    flags.DEFINE_string("asr", None, "Also grade the model's audio through this transcriber, "
                        "'package.module:function' (audio, sample_rate) -> timed words (eval/spoken.py).")
    flags.DEFINE_string("export_fdb", None, "Write Full-Duplex-Bench outputs (output.wav/json per sample) here.")
    flags.DEFINE_string("fdb_input", None, "Full-Duplex-Bench input folders (default: write them from the episodes).")


class EvaluateError(UserError, RuntimeError):
    """A bad command-line input."""


def make_engine(config, workdir: str | None, init: str, slots: int = 0, step: int | None = None):
    from flax import nnx

    from interaction_jax.inference.engine import StreamEngine
    from interaction_jax.inference.params import load_params
    from interaction_jax.model.interaction_model import InteractionModel

    if init == "checkpoint" and not workdir:
        raise EvaluateError("--init=checkpoint needs --workdir (or pass --init=random)")
    model = InteractionModel(config, rngs=nnx.Rngs(int(config.seed)))
    engine = StreamEngine(config, model, slots=slots or None)
    if init == "checkpoint":
        engine.load_params(*load_params(config, workdir, log_prefix="[eval]", step=step))
    return engine


_AUDIO_TASKS = ("interruption", "turntaking")  # the fd tasks with audio-based measures (benchmarks.fd_audio)


def _attach_speech(runs, params, n_iter: int) -> None:
    """Sets `run.speech` (VAD segments of its Griffin-Lim waveform) on the runs of `_AUDIO_TASKS`."""
    from interaction_jax.eval.audio_timing import run_speech

    for run in runs:
        if run.task in _AUDIO_TASKS:
            run.speech = run_speech(run, params, n_iter)


def evaluate(config, *, workdir: str | None, init: str, benchmarks: list[str], num_examples: int, out_dir: str,
             baseline: bool = False, oracle: bool = False, plot: bool = False, seed: int = 0, slots: int = 0,
             episode_seconds: float = 0.0, asr: str | None = None, split: str = "test",
             instruction_mode: str | dict[str, str] = "mixed", step: int | None = None,
             scene: str = "default") -> dict:
    """Runs the benchmarks; returns (and writes) the results dict.

    `instruction_mode` applies to every task, or per task as {task: mode} (others "mixed");
    `split` picks the benchmark seed range; `step` a checkpoint other than the newest; `scene`
    "clean" renders the visual tasks without camera jitter and noise (same seeds). Where a
    benchmark's episodes carry both typed and spoken instructions, `metrics_by_mode` holds the
    metrics of each kind apart.
    """
    from interaction_jax.eval import benchmarks as bm
    from interaction_jax.eval.episodes import benchmark_episodes
    from interaction_jax.eval.grading import ground_truth_run
    from interaction_jax.eval.runner import run_episodes

    unknown = [b for b in benchmarks if b not in bm.BENCHMARK_TASKS]
    if unknown:
        raise EvaluateError(f"--benchmarks: unknown {unknown}; choose from {sorted(bm.BENCHMARK_TASKS)}")
    if num_examples < 1:
        raise EvaluateError(f"--num_examples must be >= 1, got {num_examples}")
    seconds = float(episode_seconds or config.data.episode_seconds)
    tasks = sorted({t for b in benchmarks for t in bm.BENCHMARK_TASKS[b]})
    modes = instruction_mode if isinstance(instruction_mode, dict) else dict.fromkeys(tasks, instruction_mode)
    episodes = {t: benchmark_episodes(t, num_examples, seconds, split=split, instruction_mode=modes.get(t, "mixed"),
                                      scene=scene) for t in tasks}
    all_eps = [ep for t in tasks for ep in episodes[t]]
    transcriber = None
    if asr:
        from interaction_jax.eval.spoken import load_transcriber

        transcriber = load_transcriber(asr)  # a bad spec fails before anything runs
    engine = make_engine(config, workdir, init, slots, step=step)
    t0 = time.perf_counter()
    runs = {"model": run_episodes(engine, all_eps, seed=seed)}
    model_s = time.perf_counter() - t0
    if "fd" in benchmarks:  # audio-based fd measures: VAD on the model's own waveform
        _attach_speech(runs["model"], engine.feature_params, int(config.inference.griffin_lim_iters))
    if transcriber is not None:
        from interaction_jax.eval.spoken import spoken_runs

        print(f"[eval] transcribing the model's audio with {asr}", flush=True)
        runs["model (spoken)"] = spoken_runs(runs["model"], transcriber, engine.feature_params, spec=asr,
                                             n_iter=int(config.inference.griffin_lim_iters))
    if baseline:
        from interaction_jax.eval.baseline import run_baseline

        runs["turn-based baseline"] = run_baseline(all_eps)
    if oracle:
        runs["oracle (targets)"] = [ground_truth_run(ep, config=config) for ep in all_eps]
        if "fd" in benchmarks:  # the targets' own recorded speech
            from interaction_jax.eval.audio_timing import speech_segments

            for ep, run in zip(all_eps, runs["oracle (targets)"], strict=True):
                if ep.task in _AUDIO_TASKS:
                    run.speech = speech_segments(ep.model_audio, ep.sample_rate)
    results: dict = {"metrics": {s: {} for s in runs}, "metrics_by_mode": {s: {} for s in runs}, "examples": {}}
    masks = bm.gradable(all_eps, config=config)  # the targets are packed and graded once per episode
    for b in benchmarks:
        eps = [ep for t in bm.BENCHMARK_TASKS[b] for ep in episodes[t]]
        rows = []
        for system, system_runs in runs.items():
            by_id = {r.episode_id: r for r in system_runs}
            items = bm.graded(eps, [by_id[ep.episode_id] for ep in eps], masks)
            results["metrics"][system][b] = bm.score_items(b, items)
            by_mode: dict[str, list] = {}
            for it in items:
                by_mode.setdefault(it[0].metadata.get("instruction_mode", "none"), []).append(it)
            if len({"typed", "spoken"} & set(by_mode)) == 2:
                results["metrics_by_mode"][system][b] = {
                    m: bm.score_items(b, [*its, *by_mode.get("none", [])]) for m, its in by_mode.items() if m != "none"
                }  # episodes without instructions (talking to others) count in both
            for ep, run, wr in items:
                rows.append({"system": system, "episode_id": ep.episode_id, "task": ep.task,
                             "instruction_mode": ep.metadata.get("instruction_mode"),
                             "score": sum(r.passed for _, r in wr) / len(wr) if wr else None,
                             "windows": [r.to_json() for _, r in wr], "output": run.to_json()})
        results["examples"][b] = rows
    results.update(
        benchmarks=benchmarks, num_examples=num_examples, episode_seconds=seconds, workdir=workdir, init=init,
        split=split, instruction_mode=modes, scene=scene, temperature=float(config.inference.temperature),
        top_p=float(config.inference.top_p), self_audio=str(config.inference.self_audio),
        commit=commit(), hardware=hardware(), model_seconds=model_s, slots=engine.slots,
        table=bm.table(results["metrics"]),
    )  # fmt: skip
    print("\n" + results["table"] + "\n")
    os.makedirs(out_dir, exist_ok=True)
    if plot:
        from interaction_jax.eval.plots import plot_best_worst

        by_id = {ep.episode_id: ep for eps in episodes.values() for ep in eps}
        results["plots"] = plot_best_worst(results, out_dir, by_id)
        if "visual" in benchmarks:  # timelines with frame thumbnails, per visual task
            from interaction_jax.eval.visual import plot_visual

            results["plots"] += plot_visual(results, out_dir, by_id)
        for p in results["plots"]:
            print(f"[eval] plot {p}")
    path = os.path.join(out_dir, "results.json")
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(results, f, indent=1)
    os.replace(tmp, path)
    print(f"[eval] wrote {path}")
    return results


def main(argv):
    from interaction_jax.eval.fdb import FdbError
    from interaction_jax.eval.spoken import ASRError
    from interaction_jax.features.audio import AudioError
    from interaction_jax.inference.params import ParamsError
    from interaction_jax.train.checkpoint import CheckpointMismatchError

    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}: evaluate takes only flags")
    out = FLAGS.out or (os.path.join(FLAGS.workdir, "eval") if FLAGS.workdir else "eval_out")
    from interaction_jax.config_lib import ConfigError, config_for_run

    if FLAGS.init == "checkpoint" and not FLAGS.workdir:
        raise EvaluateError("--init=checkpoint needs --workdir (or pass --init=random)")
    if FLAGS.workdir and not os.path.isdir(FLAGS.workdir):
        raise EvaluateError(f"--workdir={FLAGS.workdir} does not exist (expected a training run directory)")
    cli.check_output_dir(FLAGS.export_fdb or out, "--export_fdb" if FLAGS.export_fdb else "--out")
    try:
        config = config_for_run(FLAGS.config, FLAGS.workdir, "configs/tiny.py")
        if FLAGS.export_fdb:
            from interaction_jax.eval import fdb
            from interaction_jax.eval.episodes import benchmark_episodes

            if FLAGS.fdb_input and FLAGS.oracle:
                raise EvaluateError("--export_fdb --oracle writes the episodes' targets; it takes no --fdb_input")
            if FLAGS.fdb_input:  # one FDB task root or a folder of them -> EXPORT_FDB/<root name>/
                fdb.task_roots(FLAGS.fdb_input)  # a wrong folder fails before the engine compiles
                engine = make_engine(config, FLAGS.workdir, FLAGS.init, FLAGS.slots)
                fdb.export_fdb_tree(engine, FLAGS.export_fdb, input_root=FLAGS.fdb_input, seed=FLAGS.seed)
                return
            seconds = float(FLAGS.episode_seconds or config.data.episode_seconds)
            eps = [ep for t in fdb.EPISODE_TASKS for ep in benchmark_episodes(t, FLAGS.num_examples, seconds)]
            if FLAGS.oracle:  # the episodes' targets as the system, instead of the model
                fdb.export_oracle_tree(eps, FLAGS.export_fdb, config=config)
                return
            engine = make_engine(config, FLAGS.workdir, FLAGS.init, FLAGS.slots)
            fdb.export_fdb_tree(engine, FLAGS.export_fdb, episodes=eps, seed=FLAGS.seed)  # EXPORT_FDB/<task>/
            return
        evaluate(config, workdir=FLAGS.workdir, init=FLAGS.init, benchmarks=FLAGS.benchmarks,
                 num_examples=FLAGS.num_examples, out_dir=out, baseline=FLAGS.baseline, oracle=FLAGS.oracle,
                 plot=FLAGS.plot, seed=FLAGS.seed, slots=FLAGS.slots, episode_seconds=FLAGS.episode_seconds,
                 asr=FLAGS.asr, split=FLAGS.split, instruction_mode=FLAGS.instruction_mode, scene=FLAGS.scene)
    except (EvaluateError, ParamsError, AudioError, CheckpointMismatchError, FdbError, ConfigError, ASRError) as e:
        raise app.UsageError(str(e)) from e


if __name__ == "__main__":
    cli.run(main, name="evaluate", define_flags=_define_flags)
