"""Ablations of the interaction_small recipe: each row removes (or adds) one ingredient, same budget.

    python experiments/interaction_small/ablations.py --workdir=runs/interaction_small_ablations \
        [--rows=recipe,cropped_windows,no_self_audio_dropout,spoken_content,one_head,no_user_speech,...] \
        [--steps=750] [--num_examples=20] [--temperature=0.3]

Every row is `run.py` (prepare, train, evaluate, report) with the recipe's config plus the row's
overrides, `--steps` training steps and `--num_examples` test episodes per task at one decoding
temperature (by default the one the full run chose on the validation seeds, read from
`results.json`). Rows with the same task mix share their rendered data. Each row writes
`ablations/<row>/results.json` (committed; its `results.md` beside it); this script then writes
`ablations/summary.json` and prints the table that the experiment's README quotes.

The budget is smaller than the headline run's, so compare rows with each other (the `recipe` row
is the reference at this budget), not with `results.json`.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

from absl import app, flags

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
from config import TRAIN_MIX  # noqa: E402  (experiments/interaction_small/config.py)

SPOKEN_MIX = TRAIN_MIX.replace("_typed", "")  # the content tasks with their default typed/spoken mix

# name -> (what changes, config overrides)
ROWS: dict[str, tuple[str, list[str]]] = {
    "recipe": ("the recipe (config.py) at this budget", []),
    "cropped_windows": ("windows of 25 micro-turns at random starts instead of whole episodes from 0",
                        ["data.window_micro_turns=25", "data.start_at_zero_prob=0.0"]),
    "no_self_audio_dropout": ("train.self_audio_dropout=0 (the model always hears its own training voice)",
                              ["train.self_audio_dropout=0.0"]),
    "spoken_content": ("content instructions typed or spoken (the tasks' default mix) instead of typed",
                       [f"data.task={SPOKEN_MIX}"]),
    "one_head": ("1 attention head of 128 (1 KV head) instead of 4 of 32", [
        "model.num_heads=1", "model.num_kv_heads=1", "model.head_dim=128"]),
    "no_user_speech": ("no user-speech transcription target (model.user_speech_loss_weight=0)",
                       ["model.user_speech_loss_weight=0.0"]),
    "plus_speak_weight": ("+ silence targets weighted 0.3 in the text loss (model.text_nothing_loss_weight)",
                          ["model.text_nothing_loss_weight=0.3"]),
}
HEADLINE = ("timespeak_accuracy", "cuespeak_accuracy", "interruption_stop_rate", "backchannel_false_stop_rate",
            "turn_taking_takeover_rate", "turn_taking_latency_s", "turn_taking_answer_accuracy",
            "delegation_recall", "delegation_request_exact")

FLAGS = flags.FLAGS


def _define_flags() -> None:
    """Defined when run as a script, not on import (tests import ROWS and table)."""
    flags.DEFINE_string("workdir", "runs/interaction_small_ablations", "Data, runs and evaluations of every row.")
    flags.DEFINE_list("rows", list(ROWS), "Rows to run, in order.")
    flags.DEFINE_integer("steps", 750, "Training steps of every row.")
    flags.DEFINE_integer("num_examples", 20, "Test episodes per benchmark task.")
    flags.DEFINE_float("temperature", -1.0, "Decoding temperature (< 0: the one results.json chose on validation).")
    flags.DEFINE_string("out_dir", os.path.join(HERE, "ablations"), "Where each row's results and summary.json go.")


def _data_key(overrides: list[str]) -> str:
    task = next((o.split("=", 1)[1] for o in overrides if o.startswith("data.task=")), TRAIN_MIX)
    return hashlib.sha1(task.encode()).hexdigest()[:10]


def chosen_temperature(flag: float) -> float:
    """`flag` if >= 0, else the temperature the full run chose on the validation seeds (results.json)."""
    if flag >= 0:
        return flag
    path = os.path.join(HERE, "results.json")
    if not os.path.exists(path):
        raise app.UsageError("--temperature not given and results.json (the full run's choice) is missing")
    return float(json.load(open(path))["decoding"]["temperature"])


def link_data(workdir: str, shared: str) -> None:
    """`workdir/data` -> `shared` (rows that train on the same mix render it once)."""
    os.makedirs(workdir, exist_ok=True)
    os.makedirs(shared, exist_ok=True)
    link = os.path.join(workdir, "data")
    if not os.path.lexists(link):
        os.symlink(shared, link)


def define_probe_flags(rows: list[str], workdir: str, out: str) -> None:
    """The flags every one-task probe (depth.py, spoken.py) takes: rows, budget, test set, temperature, output."""
    flags.DEFINE_string("workdir", workdir, "Data, runs and evaluations of every row.")
    flags.DEFINE_list("rows", rows, "Rows to run, in order.")
    flags.DEFINE_integer("steps", 1000, "Training steps of every row.")
    flags.DEFINE_integer("num_episodes", 3000, "Rendered training episodes (shared by the rows).")
    flags.DEFINE_integer("num_examples", 50, "Test episodes.")
    flags.DEFINE_float("temperature", -1.0, "Decoding temperature (< 0: the one results.json chose on validation).")
    flags.DEFINE_string("out", out, "Where the results JSON goes.")
    flags.DEFINE_bool("analyse_only", False, "Only recompute `analysis` from the rows' saved evaluations.")


def probe_overrides(task: str, row_overrides: list[str]) -> list[str]:
    """A probe row's config overrides: its task and the probe flags' budget, then the row's own."""
    return [f"data.task={task}", f"data.num_episodes={FLAGS.num_episodes}", f"train.num_steps={FLAGS.steps}",
            f"train.keep_every={FLAGS.steps}", *row_overrides]


def write_json_atomic(path: str, obj: dict) -> None:
    """Writes `obj` to `path` via a temporary file and a rename (a stopped run never leaves half a JSON)."""
    with open(path + ".tmp", "w") as fh:
        json.dump(obj, fh, indent=1)
    os.replace(path + ".tmp", path)


def short_commit() -> str:
    """This checkout's commit (short), recorded beside every row a probe writes."""
    r = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True, text=True)
    return r.stdout.strip() or "unknown"


def train_row(workdir: str, shared_data: str, overrides: list[str], tag: str) -> float:
    """`run.py --stages=prepare,train` for one probe row (data rendered once in `shared_data`, resumable);
    returns the wall seconds."""
    import time

    link_data(workdir, os.path.abspath(shared_data))
    cmd = [sys.executable, os.path.join(HERE, "run.py"), f"--workdir={workdir}", "--stages=prepare,train",
           *[f"--config.{o}" for o in overrides]]
    print(f"[{tag}] {os.path.basename(workdir)}: " + " ".join(cmd[1:]), flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT)
    return time.perf_counter() - t0


def run_row(name: str, temperature: float) -> dict:
    """Runs one row's pipeline (resumable) and returns its headline on the test seeds."""
    _, overrides = ROWS[name]
    workdir = os.path.join(FLAGS.workdir, name)
    link_data(workdir, os.path.abspath(os.path.join(FLAGS.workdir, "data", _data_key(overrides))))
    out = os.path.join(FLAGS.out_dir, name, "results.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    cmd = [sys.executable, os.path.join(HERE, "run.py"), f"--workdir={workdir}",
           "--stages=prepare,train,evaluate,report", f"--num_examples={FLAGS.num_examples}", f"--results={out}",
           f"--config.train.num_steps={FLAGS.steps}", f"--config.inference.temperature={temperature}",
           *[f"--config.{o}" for o in overrides]]
    print(f"[ablations] {name}: " + " ".join(cmd[1:]), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)
    return json.load(open(out))


def table(rows: dict[str, dict]) -> str:
    """A markdown table: one row per ablation, the headline metrics of the model on the test seeds."""
    head = "| row | change | " + " | ".join(HEADLINE) + " |"
    lines = [head, "|" + " --- |" * (len(HEADLINE) + 2)]
    for name, res in rows.items():
        h = res["test"]["headline_typed"]["model"]
        cells = ["-" if h.get(k) is None else f"{h[k]:.2f}" for k in HEADLINE]
        lines.append(f"| {name} | {ROWS[name][0]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def collect(out_dir: str, steps: int, temperature: float) -> dict[str, dict]:
    """Every row of `ROWS` whose results file in `out_dir` was trained for `steps` and decoded at
    `temperature` (rows run by earlier invocations count; a row of another budget does not)."""
    rows = {}
    for name in ROWS:
        path = os.path.join(out_dir, name, "results.json")
        if not os.path.exists(path):
            continue
        res = json.load(open(path))
        if (res["config"]["train"]["num_steps"] == steps
                and abs(res["decoding"]["temperature"] - temperature) < 1e-9):
            rows[name] = res
    return rows


def write_summary(out_dir: str, steps: int, num_examples: int, temperature: float) -> dict[str, dict]:
    """`out_dir/summary.json` from the rows finished so far (rewritten after every row)."""
    results = collect(out_dir, steps, temperature)
    summary = {"steps": steps, "num_examples": num_examples, "temperature": temperature,
               "split": "test", "command": " ".join(sys.argv),
               "rows": {n: {"change": ROWS[n][0], "overrides": ROWS[n][1], "commit": r.get("commit"),
                            "examples_per_task": r["test"].get("examples_per_task"),
                            "train_seconds": r.get("wall_seconds", {}).get("train"),
                            "headline": r["test"]["headline_typed"]["model"]} for n, r in results.items()}}
    write_json_atomic(os.path.join(out_dir, "summary.json"), summary)
    return results


def main(argv):
    del argv
    unknown = [r for r in FLAGS.rows if r not in ROWS]
    if unknown:
        raise app.UsageError(f"--rows: unknown {unknown}; choose from {', '.join(ROWS)}")
    if FLAGS.steps < 1 or FLAGS.num_examples < 1:
        raise app.UsageError("--steps and --num_examples must be >= 1")
    temperature = chosen_temperature(FLAGS.temperature)
    for name in FLAGS.rows:
        run_row(name, temperature)
        results = write_summary(FLAGS.out_dir, FLAGS.steps, FLAGS.num_examples, temperature)
        print(table(results), flush=True)
    print(f"[ablations] wrote {os.path.join(FLAGS.out_dir, 'summary.json')}")


if __name__ == "__main__":
    from interaction_jax.cli import run as run_cli

    run_cli(main, define_flags=_define_flags)
