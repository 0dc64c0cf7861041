"""Do spoken instructions work once the model reads its own transcript? TimeSpeak with every
instruction spoken, the recipe with and without `model.user_speech_feedback`, same data and steps.

    python experiments/interaction_small/spoken.py --workdir=runs/interaction_small_spoken \
        [--rows=recipe,feedback] [--steps=1000] [--num_examples=50] [--temperature=0.7]

The full run does TimeSpeak from typed instructions (the word to say is copied from text) and
not at all from spoken ones: copying the word out of dMel frames is a different, harder circuit.
With `model.user_speech_feedback` the transcript the model writes at its USER_AUDIO positions is
fed back one micro-turn later as text tokens, so a heard instruction becomes text the model can
copy as it copies a typed one. Both rows are the recipe's config.py (4 layers, the user-speech
transcription target) trained on spoken-instruction TimeSpeak episodes only, from the same
rendered data; `feedback` changes that one switch. Each row is evaluated through live streaming
sessions on the *test* seed range with spoken instructions, the cascade beside it, at one
decoding temperature (default: the one the full run chose on validation seeds, results.json).

Writes `spoken.json` beside this file (committed; every row's TimeSpeak metrics, the training
loss and user-speech word accuracy at the end, wall times, commit, and `analysis`: whether the
speak windows are lost to timing or to the word, see `analyse`) and prints the table the README
quotes. `--analyse_only` recomputes the analysis from the rows' saved evaluations.
"""

from __future__ import annotations

import json
import os
import sys
import time

from absl import app, flags

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from ablations import (  # noqa: E402
    chosen_temperature,  # noqa: E402
    define_probe_flags,
    probe_overrides,
    short_commit,
    train_row,
    write_json_atomic,
)
from depth import _last_scalars  # noqa: E402

# name -> (what changes, config overrides)
ROWS: dict[str, tuple[str, list[str]]] = {
    "recipe": ("the recipe (4 layers, user-speech transcription target)", []),
    "feedback": ("the recipe with the transcript fed back (model.user_speech_feedback)",
                 ["model.user_speech_feedback=True"]),
}
TASK = "timespeak_spoken"
BENCHMARK = "timespeak"
METRICS = ("accuracy", "window_accuracy", "speak_hit_rate", "early_speech_rate", "timing_error_median_s", "examples")
FLAGS = flags.FLAGS


def _define_flags() -> None:
    """Defined when run as a script, not on import (tests import ROWS and table)."""
    define_probe_flags(list(ROWS), "runs/interaction_small_spoken", os.path.join(HERE, "spoken.json"))


def _overrides(name: str) -> list[str]:
    return probe_overrides(TASK, ROWS[name][1])


def run_row(name: str, temperature: float) -> dict:
    """Prepares (shared data), trains (resumable) and evaluates one row; returns its JSON entry."""
    from interaction_jax import config_lib
    from interaction_jax.evaluate import evaluate

    workdir = os.path.join(FLAGS.workdir, name)
    train_s = train_row(workdir, os.path.join(FLAGS.workdir, "data"), _overrides(name), "spoken")
    config = config_lib.load_run_config(os.path.join(workdir, "run"))
    with config.unlocked():
        config.inference.temperature = float(temperature)
    t0 = time.perf_counter()
    res = evaluate(config, workdir=os.path.join(workdir, "run"), init="checkpoint", benchmarks=[BENCHMARK],
                   num_examples=FLAGS.num_examples, out_dir=os.path.join(workdir, "eval"), baseline=True,
                   split="test", instruction_mode="spoken")
    eval_s = time.perf_counter() - t0
    return {"change": ROWS[name][0], "overrides": _overrides(name),
            BENCHMARK: {s: {k: res["metrics"][s][BENCHMARK].get(k) for k in METRICS}
                        for s in res["metrics"] if BENCHMARK in res["metrics"][s]},
            "training": _last_scalars(os.path.join(workdir, "run", "tb")),
            "wall_seconds": {"prepare_and_train": round(train_s, 1), "evaluate": round(eval_s, 1)}}


def analyse(examples: list[dict]) -> dict:
    """Per system, where the speak windows are lost: no speech in the window, or speech with the wrong word.

    `spoke_in_window`: of the speak windows, the fraction in which the system said anything;
    `said_right_word`: of those, the fraction where it said the requested word (the copy of the
    spoken word; timing is the other part of a hit).
    """
    out: dict[str, dict] = {}
    for e in examples:
        c = out.setdefault(e["system"], {"speak_windows": 0, "with_speech": 0, "right_word": 0})
        for w in e["windows"]:
            if w["kind"] != "speak":
                continue
            said = [x["text"] for x in e["output"]["words"] if w["start"] <= x["start"] < w["end"]]
            c["speak_windows"] += 1
            c["with_speech"] += bool(said)
            c["right_word"] += w["expected"] in said
    for c in out.values():
        c["spoke_in_window"] = c["with_speech"] / c["speak_windows"] if c["speak_windows"] else None
        c["said_right_word"] = c["right_word"] / c["with_speech"] if c["with_speech"] else None
    return out


def _analysis(name: str) -> dict:
    path = os.path.join(FLAGS.workdir, name, "eval", "results.json")
    if not os.path.exists(path):
        raise app.UsageError(f"--analyse_only: {path} not found (row {name!r} has no saved evaluation under --workdir)")
    res = json.load(open(path))
    return analyse(res["examples"][BENCHMARK])


def table(rows: dict[str, dict]) -> str:
    """A markdown table: one row per row, the model's and the cascade's spoken-TimeSpeak metrics (test seeds)."""
    lines = ["| row | change | accuracy | speak-window hits | spoke in window / right word | early speech | "
             "timing error median | word acc. (train) | cascade accuracy |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]

    def f(x, unit=""):
        return "-" if x is None else f"{x:.2f}{unit}"

    for name, r in rows.items():
        m, c = r[BENCHMARK].get("model", {}), r[BENCHMARK].get("turn-based baseline", {})
        a = r.get("analysis", {}).get("model", {})
        lines.append(f"| {name} | {r['change']} | {f(m.get('accuracy'))} | {f(m.get('speak_hit_rate'))} | "
                     f"{f(a.get('spoke_in_window'))} / {f(a.get('said_right_word'))} | "
                     f"{f(m.get('early_speech_rate'))} | {f(m.get('timing_error_median_s'), ' s')} | "
                     f"{f(r['training'].get('user_speech_word_accuracy'))} | {f(c.get('accuracy'))} |")
    return "\n".join(lines)


def main(argv):
    del argv
    unknown = [r for r in FLAGS.rows if r not in ROWS]
    if unknown:
        raise app.UsageError(f"--rows: unknown {unknown}; choose from {', '.join(ROWS)}")
    if FLAGS.steps < 1 or FLAGS.num_examples < 1 or FLAGS.num_episodes < 1:
        raise app.UsageError("--steps, --num_episodes and --num_examples must be >= 1")
    if FLAGS.analyse_only:
        summary = json.load(open(FLAGS.out))
        for name in FLAGS.rows:
            summary["rows"][name]["analysis"] = _analysis(name)
        write_json_atomic(FLAGS.out, summary)
        print(table(summary["rows"]))
        return
    temperature = chosen_temperature(FLAGS.temperature)
    prev = json.load(open(FLAGS.out)) if os.path.exists(FLAGS.out) else {}
    rows = dict(prev.get("rows", {})) if prev.get("steps") == FLAGS.steps else {}
    for name in FLAGS.rows:
        rows[name] = {**run_row(name, temperature), "analysis": _analysis(name), "commit": short_commit(),
                      "command": "python experiments/interaction_small/spoken.py " + " ".join(
                          a for a in sys.argv[1:] if not a.startswith("--workdir="))}
        summary = {"task": TASK, "benchmark": BENCHMARK, "instruction_mode": "spoken", "steps": FLAGS.steps,
                   "num_episodes": FLAGS.num_episodes, "num_examples": FLAGS.num_examples,
                   "temperature": temperature, "split": "test", "rows": rows}
        write_json_atomic(FLAGS.out, summary)
    print(table(rows))
    print(f"[spoken] wrote {FLAGS.out}")


if __name__ == "__main__":
    from interaction_jax.cli import run as run_cli

    run_cli(main, define_flags=_define_flags)
