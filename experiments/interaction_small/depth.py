"""Is CueSpeak limited by depth? The recipe trained on CueSpeak alone at 4 and 8 layers (and with an
audio encoder per position), same data and steps.

    python experiments/interaction_small/depth.py --workdir=runs/interaction_small_depth \
        [--rows=layers4,layers8,frames_mlp,feedback,feedback_at_end,feedback_at_end_speak,width256,\
feedback_at_end_late,feedback_at_end_3000] \
        [--steps=1000] [--num_examples=50] [--temperature=0.7]

CueSpeak asks for three things within one or two micro-turns of a spoken word's end: the word's
identity from dMel frames spread over two or three micro-turns, its membership in the category
the typed instruction named, and the response word copied from that instruction. A transformer
position has only `num_layers` serial steps however long the model waits (a later position reads
earlier ones layer by layer), so if 4 layers are too few the model cannot do all three in time.
Each row changes one thing against `layers4` (`model.num_layers`, the audio embedding or the width;
`feedback_at_end` one thing against `feedback`, `feedback_at_end_speak` one against that; every
other setting is the recipe's config.py, including the user-speech transcription target) and is
trained on typed-instruction CueSpeak episodes only, from the same rendered data. Each row is
evaluated through live streaming sessions on the *test* seed range (typed instructions, the
cascade beside it) at one decoding temperature (default: the one the full run chose on
validation seeds, from results.json).

Writes `depth.json` beside this file (committed; every row's CueSpeak metrics, the training
loss and user-speech word accuracy at the end, wall times, and `analysis`: where the misses and
false responses are, see `analyse`) and prints the table the README quotes. `--analyse_only`
recomputes the analysis from the rows' saved evaluations without training or evaluating.
"""

from __future__ import annotations

import json
import os
import sys
import time

from absl import app, flags

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
from ablations import (  # noqa: E402
    chosen_temperature,  # noqa: E402  (experiments/interaction_small/ablations.py)
    define_probe_flags,
    probe_overrides,
    short_commit,
    train_row,
    write_json_atomic,
)

# name -> (what changes, config overrides)
ROWS: dict[str, tuple[str, list[str]]] = {
    "layers4": ("the recipe's 4 layers", ["model.num_layers=4"]),
    "layers8": ("8 layers (twice the serial depth, twice the compute per step)", ["model.num_layers=8"]),
    # the same question at the input: a per-position audio encoder instead of the linear dMel bag
    "frames_mlp": ("4 layers, dMel frames through a per-position MLP (model.dmel_embed=frames_mlp)",
                   ["model.num_layers=4", "model.dmel_embed=frames_mlp"]),
    # or is it that the word identity the transcript target builds arrives too late in the layers?
    # fed back as a text token one micro-turn later, a heard word is read like a typed one
    "feedback": ("4 layers, the user-speech transcript fed back (model.user_speech_feedback)",
                 ["model.num_layers=4", "model.user_speech_feedback=True"]),
    # one change from `feedback`: the transcript starts in the micro-turn the word ends, so the feed
    # arrives one micro-turn earlier (the `feedback` row's feed came after most cue responses were due)
    "feedback_at_end": ("feedback, transcript written from the word's last frame (model.user_speech_timing=at_end)",
                        ["model.num_layers=4", "model.user_speech_feedback=True", "model.user_speech_timing=at_end"]),
    # one change from `feedback_at_end`, whose errors are mostly misses (it speaks in under half of
    # the cue windows): the silence targets that dominate the text loss weighted 0.3
    "feedback_at_end_speak": ("feedback_at_end, silence targets weighted 0.3 (model.text_nothing_loss_weight)",
                              ["model.num_layers=4", "model.user_speech_feedback=True",
                               "model.user_speech_timing=at_end", "model.text_nothing_loss_weight=0.3"]),
    # width instead of depth: more features per position for the word's identity and the copy
    # (4 heads of 64, FFN 1024: about 3x the parameters and a slower step)
    "width256": ("4 layers, twice the width (model.d_model=256, 4 heads of 64, FFN 1024)",
                 ["model.num_layers=4", "model.d_model=256", "model.head_dim=64", "model.ffn_dim=1024"]),
    # one change from `feedback_at_end`: trained on CueSpeak whose responses come 0.5-0.7 s after the
    # cue (task cuespeak_late_typed) instead of 0.25-0.45 s, after the heard word's transcript is
    # written (transcript_lag.json); graded on the same test episodes and windows
    "feedback_at_end_late": ("feedback_at_end, trained responses 0.5-0.7 s after the cue (task cuespeak_late_typed)",
                             ["model.num_layers=4", "model.user_speech_feedback=True",
                              "model.user_speech_timing=at_end"]),
    # the budget instead: `feedback_at_end` trained three times as long (the full run's 3,000 steps,
    # all of them CueSpeak): is the speak decision learned with more steps?
    "feedback_at_end_3000": ("feedback_at_end, 3,000 steps instead of 1,000",
                             ["model.num_layers=4", "model.user_speech_feedback=True",
                              "model.user_speech_timing=at_end"]),
}
TASK = "cuespeak_typed"
ROW_TASKS = {"feedback_at_end_late": "cuespeak_late_typed"}  # rows trained on another task (own data)
ROW_STEPS = {"feedback_at_end_3000": 3000}  # rows trained for another number of steps than --steps
METRICS = ("accuracy", "false_alarm_rate", "cue_hit_rate", "exact", "response_latency_median_s")
FLAGS = flags.FLAGS


def _define_flags() -> None:
    """Defined when run as a script, not on import (tests import ROWS and table)."""
    define_probe_flags(list(ROWS), "runs/interaction_small_depth", os.path.join(HERE, "depth.json"))


def _command() -> str:
    """This run's command line, the work directory written relative to the repository (no machine paths)."""
    args = [os.path.relpath(sys.argv[0], REPO)] if os.path.isabs(sys.argv[0]) else [sys.argv[0]]
    for a in sys.argv[1:]:
        if a.startswith("--workdir=") and os.path.isabs(a.split("=", 1)[1]):
            a = "--workdir=runs/interaction_small_depth"
        if a.startswith("--out=") and os.path.isabs(a.split("=", 1)[1]):  # no machine paths in the JSON
            rel = os.path.relpath(a.split("=", 1)[1], REPO)
            a = "--out=" + (os.path.basename(rel) if rel.startswith("..") else rel)
        args.append(a)
    return " ".join(args)


def _overrides(name: str) -> list[str]:
    over = probe_overrides(ROW_TASKS.get(name, TASK), ROWS[name][1])
    if name in ROW_STEPS:
        steps = ROW_STEPS[name]
        over = [f"train.num_steps={steps}" if o.startswith("train.num_steps=") else
                f"train.keep_every={steps}" if o.startswith("train.keep_every=") else o for o in over]
    return over


def _data_dir(name: str) -> str:
    """The row's rendered training data, shared by the rows of one task."""
    task = ROW_TASKS.get(name, TASK)
    return os.path.join(FLAGS.workdir, "data" if task == TASK else f"data_{task}")


def _last_scalars(logdir: str) -> dict:
    from interaction_jax.train.metrics import read_scalars

    keys = ("loss", "text_loss", "user_speech_accuracy", "user_speech_word_accuracy", "eval/loss")
    scal = read_scalars(logdir) if os.path.isdir(logdir) else {}
    return {k: float(scal[k][-1][1]) for k in keys if scal.get(k)}


def run_row(name: str, temperature: float) -> dict:
    """Prepares (shared data), trains (resumable) and evaluates one row; returns its JSON entry."""
    from interaction_jax import config_lib
    from interaction_jax.evaluate import evaluate

    workdir = os.path.join(FLAGS.workdir, name)
    train_s = train_row(workdir, _data_dir(name), _overrides(name), "depth")
    config = config_lib.load_run_config(os.path.join(workdir, "run"))
    with config.unlocked():
        config.inference.temperature = float(temperature)
    t0 = time.perf_counter()
    res = evaluate(config, workdir=os.path.join(workdir, "run"), init="checkpoint", benchmarks=["cuespeak"],
                   num_examples=FLAGS.num_examples, out_dir=os.path.join(workdir, "eval"), baseline=True,
                   split="test", instruction_mode="typed")
    eval_s = time.perf_counter() - t0
    return {"change": ROWS[name][0], "overrides": _overrides(name),
            "cuespeak": {s: {k: res["metrics"][s]["cuespeak"].get(k) for k in METRICS}
                         for s in res["metrics"] if "cuespeak" in res["metrics"][s]},
            "training": _last_scalars(os.path.join(workdir, "run", "tb")),
            "wall_seconds": {"prepare_and_train": round(train_s, 1), "evaluate": round(eval_s, 1)}}


def analyse(examples: list[dict], episodes: dict) -> dict:
    """Where the model's CueSpeak errors are, from its graded outputs and the episodes' metadata.

    * `said_right_word`: of the cue windows in which the model said anything, the fraction where
      it said the instructed response (0 wrong words: the copy from the typed instruction works).
    * `hit_rate_by_category`: cue hits per instructed category.
    * `false_response_after`: for each kind of non-cue word the user says after the first cue
      ("other_category": a word of another category, a near miss; "filler"), the fraction followed
      within 1.2 s by a model word that lies in no cue's window (a response to the wrong word).
    """
    import numpy as np

    from interaction_jax.data.tasks import cuespeak

    spoke = right = 0
    by_cat: dict[str, list[bool]] = {}
    after = {"other_category": [], "filler": []}
    for e in examples:
        if e["system"] != "model":
            continue
        ep = episodes[e["episode_id"]]
        cues = set(cuespeak.CATEGORIES[ep.metadata["category"]])
        cue_ends = list(ep.metadata["cue_ends"])
        words = e["output"]["words"]
        for w in e["windows"]:
            if w["kind"] != "speak":
                continue
            by_cat.setdefault(ep.metadata["category"], []).append(bool(w["passed"]))
            said = [x["text"] for x in words if w["start"] <= x["start"] < w["end"]]
            spoke += bool(said)
            right += ep.metadata["response"] in said
        stray = [x["start"] for x in words if not any(c <= x["start"] < c + cuespeak.LATE_S for c in cue_ends)]
        first_cue = min(cue_ends) if cue_ends else ep.duration
        for u in ep.user_words:
            if u.start < first_cue or u.text in cues or u.end + cuespeak.LATE_S > ep.duration:
                continue
            kind = "filler" if u.text in cuespeak.FILLERS else "other_category"
            after[kind].append(any(u.end <= t < u.end + cuespeak.LATE_S for t in stray))
    return {
        "cue_windows_with_speech": spoke,
        "said_right_word": right / spoke if spoke else None,
        "hit_rate_by_category": {c: float(np.mean(v)) for c, v in sorted(by_cat.items())},
        "false_response_after": {k: float(np.mean(v)) if v else None for k, v in after.items()},
        "non_cue_words": {k: len(v) for k, v in after.items()},
    }


def _analysis(name: str) -> dict:
    from interaction_jax.eval.episodes import benchmark_episodes

    path = os.path.join(FLAGS.workdir, name, "eval", "results.json")
    if not os.path.exists(path):
        raise app.UsageError(f"--analyse_only: {path} not found (row {name!r} has no saved evaluation under --workdir)")
    res = json.load(open(path))
    eps = {e.episode_id: e for e in benchmark_episodes("cuespeak", FLAGS.num_examples, float(res["episode_seconds"]),
                                                       split="test", instruction_mode="typed", log=False)}
    return analyse(res["examples"]["cuespeak"], eps)


def table(rows: dict[str, dict]) -> str:
    """A markdown table: one row per depth, the model's and the cascade's CueSpeak metrics on the test seeds."""
    lines = ["| row | change | accuracy | false alarms | cue hits | false responses after other-category "
             "words / fillers | word acc. (train) | cascade accuracy |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]

    def f(x):
        return "-" if x is None else f"{x:.2f}"

    for name, r in rows.items():
        m, c = r["cuespeak"].get("model", {}), r["cuespeak"].get("turn-based baseline", {})
        a = r.get("analysis", {}).get("false_response_after", {})
        lines.append(f"| {name} | {r['change']} | {f(m.get('accuracy'))} | {f(m.get('false_alarm_rate'))} | "
                     f"{f(m.get('cue_hit_rate'))} | {f(a.get('other_category'))} / {f(a.get('filler'))} | "
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
        rows[name] = {**run_row(name, temperature), "commit": short_commit(), "command": _command()}
        summary = {"task": TASK, "steps": FLAGS.steps, "num_episodes": FLAGS.num_episodes,
                   "num_examples": FLAGS.num_examples, "temperature": temperature, "split": "test",
                   "rows": rows}
        write_json_atomic(FLAGS.out, summary)
    print(table(rows))
    print(f"[depth] wrote {FLAGS.out}")


if __name__ == "__main__":
    from interaction_jax.cli import run as run_cli

    run_cli(main, define_flags=_define_flags)
