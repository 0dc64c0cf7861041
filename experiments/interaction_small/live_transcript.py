"""How much of what the user says does a model transcribe in a live session (its own feed, not the truth)?

    python experiments/interaction_small/live_transcript.py --workdir=runs/interaction_small_spoken \
        [--rows=recipe,feedback] [--task=timespeak] [--instruction_mode=spoken] [--num_examples=50]

For each row of a probe (`spoken.py`'s work directory: `<workdir>/<row>/run`) it runs the test
episodes through live streaming sessions at the probe's temperature (`spoken.json`) and compares
the model's own transcript (`Session.heard_words`, the argmax of the text head at the user's
audio, which a `model.user_speech_feedback` model is fed) with the words the episode's user said:
`word_recall` = user words matched in order (difflib's longest matching blocks) / user words, and
`word_precision` = the same matches / heard words. Teacher-forced word accuracy (spoken.json's
`training`) counts tokens with the true transcript as input; this counts words with the model's
own. Writes `live_transcript.json` beside this file and prints one line per row.
"""

from __future__ import annotations

import difflib
import json
import os
import sys

from absl import app, flags

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from ablations import short_commit  # noqa: E402

FLAGS = flags.FLAGS


def _define_flags() -> None:
    """Defined when run as a script, not on import (tests import `match_words`)."""
    flags.DEFINE_string("workdir", "runs/interaction_small_spoken", "The probe's work directory (spoken.py).")
    flags.DEFINE_list("rows", ["recipe", "feedback"], "Rows (sub-folders of --workdir) to run.")
    flags.DEFINE_string("task", "timespeak", "Benchmark task whose test episodes are run.")
    flags.DEFINE_enum("instruction_mode", "spoken", ["spoken", "typed", "mixed"], "Instructions of the episodes.")
    flags.DEFINE_integer("num_examples", 50, "Test episodes.", lower_bound=1)
    flags.DEFINE_string("probe", os.path.join(HERE, "spoken.json"), "The probe's JSON (its decoding temperature).")
    flags.DEFINE_string("out", os.path.join(HERE, "live_transcript.json"), "Where the results JSON goes.")


def match_words(said: list[str], heard: list[str]) -> int:
    """Words of `said` matched, in order, by `heard` (sum of difflib's matching blocks)."""
    sm = difflib.SequenceMatcher(a=said, b=heard, autojunk=False)
    return sum(b.size for b in sm.get_matching_blocks())


def run_row(name: str, temperature: float, episodes: list) -> dict:
    from interaction_jax import config_lib
    from interaction_jax.eval.episodes import episode_chunks
    from interaction_jax.evaluate import make_engine
    from interaction_jax.inference.session import Scheduler

    run_dir = os.path.join(FLAGS.workdir, name, "run")
    if not os.path.isdir(run_dir):
        raise app.UsageError(f"--rows: {run_dir} is not a trained run (expected <workdir>/<row>/run)")
    config = config_lib.load_run_config(run_dir)
    with config.unlocked():
        config.inference.temperature = float(temperature)
    engine = make_engine(config, run_dir, "checkpoint")
    sched = Scheduler(engine)
    said_n = heard_n = matched = 0
    for g0 in range(0, len(episodes), engine.slots):
        group = episodes[g0:g0 + engine.slots]
        sessions = []
        for i, ep in enumerate(group):
            s = sched.open_session(seed=g0 + i, session_id=f"live-{ep.episode_id}")
            for chunk in episode_chunks(ep, engine.layout):
                s.push(chunk)
            sessions.append(s)
        while any(s.pending for s in sessions):
            sched.tick()
        for ep, s in zip(group, sessions, strict=True):
            said = [w.text for w in sorted(ep.user_words, key=lambda w: w.start)]
            heard = [w.text for w in s.heard_words()]
            said_n, heard_n, matched = said_n + len(said), heard_n + len(heard), matched + match_words(said, heard)
            s.close()
        print(f"[live_transcript] {name}: {g0 + len(group)}/{len(episodes)} episodes", flush=True)
    return {"user_words": said_n, "heard_words": heard_n, "matched": matched,
            "word_recall": matched / said_n if said_n else None,
            "word_precision": matched / heard_n if heard_n else None,
            "user_speech_feedback": bool(config.model.get("user_speech_feedback", False))}


def main(argv):
    del argv
    from interaction_jax.eval.episodes import benchmark_episodes

    if not os.path.exists(FLAGS.probe):
        raise app.UsageError(f"--probe: {FLAGS.probe} not found (the probe's JSON, for its temperature)")
    probe = json.load(open(FLAGS.probe))
    temperature = float(probe["temperature"])
    episodes = benchmark_episodes(FLAGS.task, FLAGS.num_examples, 10.0, split="test",
                                  instruction_mode=FLAGS.instruction_mode)
    rows = {}
    for name in FLAGS.rows:
        rows[name] = run_row(name, temperature, episodes)
        tf = probe.get("rows", {}).get(name, {}).get("training", {}).get("user_speech_word_accuracy")
        rows[name]["teacher_forced_word_token_accuracy"] = tf
        print(f"[live_transcript] {name}: live word recall {rows[name]['word_recall']:.3f}, precision "
              f"{rows[name]['word_precision'] or 0:.3f} (teacher-forced token accuracy {tf})", flush=True)
    out = {"task": FLAGS.task, "instruction_mode": FLAGS.instruction_mode, "num_examples": FLAGS.num_examples,
           "split": "test", "temperature": temperature, "commit": short_commit(), "rows": rows,
           "command": "python experiments/interaction_small/live_transcript.py " + " ".join(
               a for a in sys.argv[1:] if not a.startswith("--workdir="))}
    with open(FLAGS.out + ".tmp", "w") as fh:
        json.dump(out, fh, indent=1)
    os.replace(FLAGS.out + ".tmp", FLAGS.out)
    print(f"[live_transcript] wrote {FLAGS.out}")


if __name__ == "__main__":
    from interaction_jax.cli import run as run_cli

    run_cli(main, define_flags=_define_flags)
