"""One-change probes of the visual_cue diagnostic: does the model time its word from the frames?

    python experiments/visual_proactivity/probe.py --workdir=runs/visual_probe --rows=delta,clean

Every row is the README's probe (`config.py` trained on `visual_cue_typed` alone, 1,000 episodes
of 10 s, 1,000 steps, evaluated with `--benchmarks=visual` on 30 test episodes per visual task at
temperature 0.3, the cascade beside) with one change:

  * `delta`: `layout.video_delta=True`, every patch also carries its change since the previous
    frame (docs/streaming.md, "Frame deltas"); the scene as trained by default.
  * `clean`: the `_clean` scene (still camera, no flicker or noise; docs/data.md) in training and
    in evaluation (`evaluate --scene=clean`), RGB patches as in the original probe.

Each row writes `probe_<row>.json` beside this file: the evaluation's results (metrics and the
model's per-example windows and words; the cascade's examples dropped) and `analysis`, the
statistics of the original probe (`probe_visual_cue.json`): where the first word falls against
the visual event, and whether it is the instructed word.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
from absl import app, flags

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
CONFIG = os.path.join(HERE, "config.py")
NUM_EPISODES, STEPS, TEST_EXAMPLES, TEMPERATURE = 1000, 1000, 30, 0.3

# name -> (what changes, training task, extra config overrides, evaluate scene)
ROWS: dict[str, tuple[str, str, list[str], str]] = {
    "delta": ("patches carry the change since the previous frame (layout.video_delta=True)", "visual_cue_typed",
              ["layout.video_delta=True"], "default"),
    "clean": ("still camera, no flicker or noise, in training and evaluation (the _clean scene)",
              "visual_cue_clean_typed", [], "clean"),
}
FLAGS = flags.FLAGS


def _define_flags() -> None:
    flags.DEFINE_string("workdir", "runs/visual_probe", "Data, runs and evaluations of every row.")
    flags.DEFINE_list("rows", list(ROWS), "Rows to run, in order.")
    flags.DEFINE_string("out_dir", HERE, "Where probe_<row>.json goes.")


def analyse(results: dict) -> dict:
    """The original probe's statistics over the model's visual_cue examples: first word against the event."""
    rows = [r for r in results["examples"]["visual"] if r["system"] == "model" and r["task"] == "visual_cue"]
    events, firsts, right = [], [], []
    for r in rows:
        speak = next(w for w in r["windows"] if w["kind"] == "speak")
        words = r["output"]["words"] if "output" in r else r["words"]
        if not words:
            continue
        events.append(speak["start"])
        firsts.append(words[0]["start"])
        right.append(words[0]["text"].strip(".,!?").lower() == speak["expected"].lower())

    def spread(x):
        return {"median": float(np.median(x)), "min": float(np.min(x)), "max": float(np.max(x))} if x else None

    return {"visual_cue_episodes": len(rows), "episodes_with_speech": len(firsts),
            "first_word_is_instructed_word_rate": float(np.mean(right)) if right else None,
            "first_word_start_s": spread(firsts), "event_time_s": spread(events),
            "first_word_minus_event_s": spread([f - e for f, e in zip(firsts, events, strict=True)]),
            "corr_event_vs_first_word": float(np.corrcoef(events, firsts)[0, 1]) if len(firsts) > 2 else None,
            "how": "per visual_cue test episode with speech: the speak window start (the visual event) and the "
                   "model's first word (start, text)"}


def _run(cmd: list[str]) -> None:
    print("[probe] " + " ".join(cmd[1:]), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)


def run_row(name: str) -> dict:
    what, task, overrides, scene = ROWS[name]
    w = os.path.join(FLAGS.workdir, name)
    data = os.path.join(FLAGS.workdir, "data", task)
    py = sys.executable
    for split, n, seed in (("train", NUM_EPISODES, 0), ("eval", 32, 1_000_003)):
        if not os.path.exists(os.path.join(data, split, "manifest.json")):
            _run([py, "-m", "interaction_jax.data.prepare", f"--task={task}", f"--num_episodes={n}", f"--seed={seed}",
                  "--episode_seconds=10", f"--out={os.path.join(data, split)}"])
    cfg = [f"--config={CONFIG}", f"--config.data.task={task}", f"--config.data.data_dir={data}/train",
           f"--config.data.eval_data_dir={data}/eval", f"--config.data.num_episodes={NUM_EPISODES}",
           "--config.data.eval_num_episodes=32", f"--config.train.num_steps={STEPS}",
           *[f"--config.{o}" for o in overrides]]
    _run([py, "-m", "interaction_jax.train", *cfg, f"--workdir={w}/run"])
    _run([py, "-m", "interaction_jax.evaluate", *cfg, f"--config.inference.temperature={TEMPERATURE}",
          f"--workdir={w}/run", "--benchmarks=visual", f"--num_examples={TEST_EXAMPLES}", "--instruction_mode=typed",
          "--split=test", "--baseline", f"--scene={scene}", f"--out={w}/eval"])
    res = json.load(open(os.path.join(w, "eval", "results.json")))
    keep = {k: v for k, v in res.items() if k not in ("examples", "workdir")}
    keep["examples"] = {"visual": [{k: r[k] for k in ("system", "episode_id", "task", "score", "windows")}
                                   | {"words": r["output"]["words"]} for r in res["examples"]["visual"]
                                   if r["system"] == "model"]}
    keep["probe"] = {"row": name, "what": what, "train_task": task, "overrides": overrides, "scene": scene,
                     "steps": STEPS, "train_episodes": NUM_EPISODES,
                     "temperature_note": f"{TEMPERATURE} fixed in advance (the config default), as in the first probe"}
    keep["analysis"] = analyse(res)
    out = os.path.join(FLAGS.out_dir, f"probe_{name}.json")
    with open(out + ".tmp", "w") as fh:
        json.dump(keep, fh, indent=1)
    os.replace(out + ".tmp", out)
    print(f"[probe] {name}: wrote {out}; analysis {json.dumps(keep['analysis'])}", flush=True)
    return keep


def main(argv):
    del argv
    unknown = [r for r in FLAGS.rows if r not in ROWS]
    if unknown:
        raise app.UsageError(f"--rows: unknown {unknown}; choose from {', '.join(ROWS)}")
    for name in FLAGS.rows:
        run_row(name)


if __name__ == "__main__":
    from interaction_jax.cli import run as run_cli

    run_cli(main, define_flags=_define_flags)
