"""Delegation experiment: does the model delegate when it should, ask the right thing, and speak the result?

Runs held-out delegation-task episodes (seeds from 3_000_000, disjoint from the training and
eval seeds) through the streaming `Scheduler` with a `DelegationHub` in deterministic mode: the
tool backend's result reaches the session exactly `--sim_delay_s` of *session* time after the
model's DELEGATE token, whatever the wall-clock speed of this machine. Each episode is fed as a
live client would, one 200 ms chunk per micro-turn: user audio, typed text, and the user's
words (ground truth, each in the micro-turn where it ends, standing in for an ASR) for the
context package.

Metrics (grading windows of `data/tasks/delegation.py`):
  recall       delegate windows [q_end, q_end + 1.5) holding a DELEGATE token
  precision    DELEGATE tokens that fall in a delegate window / all DELEGATE tokens
  false alarm  no_delegate windows [q_end, q_end + 3) holding a DELEGATE token
  exact match  the first request in a hit window equals the expected request (case/punctuation-free)
  delay        result arrival (session clock) -> start of the model's first word after it
  result delay result arrival -> start of the result's own words (e.g. "6855" in "The answer is 6855.")
  spoken       the result text appears in the model's words after its arrival
  talked       the model says a word between its DELEGATE and the result's arrival (keeps going)
`--teacher_force` feeds the episode's own model text / audio instead of samples: an oracle that
must score 1.0 on recall / precision / exact match (checks this pipeline, not a model).
`--force_audio` feeds only the episode's own model *speech* as the model's audio input (its text
is sampled): does the text go wrong because the model hears its own generated voice?

    python experiments/delegation/run.py --config=experiments/interaction_small/config.py \\
        --workdir=runs/interaction_small/run --num_examples=100 --out=experiments/delegation/results.json
"""

from __future__ import annotations

import json
import os
import time

import numpy as np
from absl import app, flags

from interaction_jax import cli

FLAGS = flags.FLAGS
DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "configs", "tiny.py")


def _define_flags() -> None:
    """Defined when run as a script, not on import (tests import this module in-process)."""
    cli.DEFINE_config("config", "Config file (default configs/tiny.py).")
    flags.DEFINE_string("workdir", None, "Training run directory: parameters from its newest checkpoint.")
    flags.DEFINE_enum("init", "checkpoint", ["checkpoint", "random"],
                      "Parameters: checkpoint (needs --workdir) or random.")
    flags.DEFINE_integer("num_examples", 100, "Held-out delegation episodes.")
    flags.DEFINE_enum("task", "delegation", ["delegation", "delegation_typed", "delegation_spoken"],
                      "Episode generator: questions typed or spoken (delegation), all typed or all spoken.")
    flags.DEFINE_integer("seed", 3_000_000,
                         "Episode i uses seed + i (disjoint from data.seed / data.eval_seed ranges).")
    flags.DEFINE_float("episode_seconds", None, "Episode length (default: config.data.episode_seconds).")
    flags.DEFINE_float("sim_delay_s", None,
                       "Session s from request to result (default: config.background.sim_delay_s).")
    flags.DEFINE_integer("slots", None, "Sessions run together (default: config.inference.slots).")
    flags.DEFINE_integer("session_seed", 0, "Sampling seed of episode i's session is session_seed + i.")
    flags.DEFINE_bool("teacher_force", False, "Oracle: force the episode's own model output (must score 1.0).")
    flags.DEFINE_bool("force_audio", False, "Diagnostic: the model hears the episode's own model speech as its "
                      "audio input (instead of its generated audio); its text is sampled as usual.")
    flags.DEFINE_string("out", "experiments/delegation/results.json", "JSON results file.")
    flags.DEFINE_string("plot_dir", "", "If set: a timeline PNG for each of the first --num_plots delegate episodes.")
    flags.DEFINE_integer("num_plots", 3, "Timelines to draw with --plot_dir.")


def is_computed(request: str) -> bool:
    """A calculator request (its result is computed, never one the model could recite from a table)."""
    from interaction_jax.data.tasks.delegation import _ARITH, _normalise

    return bool(_ARITH.match(_normalise(request or "")))


def normalise(text: str) -> str:
    """Case, punctuation and spacing free (the benchmarks' `grading.normalise` word tokens, joined)."""
    from interaction_jax.eval.grading import normalise as words

    return " ".join(words(text))


def episode_chunks(ep, layout, grid=None, audio_only: bool = False) -> list:
    """The live client's chunks (`eval.episodes.episode_chunks`; results come from the hub, not the
    episode's script), each forcing the episode's own output block when `grid` is given (oracle),
    or only its model audio with `audio_only` (the model's text runs free)."""
    from interaction_jax.eval.episodes import episode_chunks as live_chunks
    from interaction_jax.streams.pack import pack_window

    chunks = live_chunks(ep, layout, scripted_background=False)
    if grid is not None:
        for t, c in enumerate(chunks):
            c.force = pack_window(grid, t, 1)
            c.force_audio_only = audio_only
    return chunks


def grade_episode(ep, log, words) -> dict:
    """Per-episode record: windows hit, delegations in/out of windows, request match, result->speech delay."""
    delegate = [w for w in ep.grading if w.kind == "delegate"]
    no_delegate = [w for w in ep.grading if w.kind == "no_delegate"]
    inside = lambda d, w: w.start <= d.time < w.end  # noqa: E731
    hits, exact = [], []
    for w in delegate:
        first = next((d for d in log if inside(d, w)), None)
        hits.append(first is not None)
        if first is not None:
            exact.append(normalise(first.request) == normalise(w.expected))
    delays, spoken, computed, result_delays, talked = [], [], [], [], []
    for d in log:
        if d.status != "done" or d.result_time is None:
            continue
        after = [w for w in words if w.start >= d.result_time]
        delays.append(after[0].start - d.result_time if after else None)
        spoken.append(normalise(d.result) in normalise(" ".join(w.text for w in after)) if d.result else False)
        computed.append(is_computed(d.request))
        # when the result's own words start (e.g. "6855" in "The answer is 6855.")
        want, said = normalise(d.result).split(), [normalise(w.text) for w in after]
        at = next((i for i in range(len(said)) if want and said[i : i + len(want)] == want), None)
        result_delays.append(after[at].start - d.result_time if at is not None else None)
        # keeps the conversation going: a word between the request and the result's arrival
        talked.append(any(d.time <= w.start < d.result_time for w in words))
    meta = ep.metadata
    return {
        "episode_id": ep.episode_id,
        "variant": meta.get("variant"),
        "expected_request": delegate[0].expected if delegate else None,
        "reference_delay_s": meta["answer_time"] - meta["result_time"] if meta.get("variant") == "delegate" else None,
        "delegate_windows": len(delegate),
        "delegate_hits": int(sum(hits)),
        "no_delegate_windows": len(no_delegate),
        "false_alarms": int(sum(any(inside(d, w) for d in log) for w in no_delegate)),
        "delegations": [
            {"time": d.time, "request": d.request, "job_id": d.job_id, "status": d.status, "result": d.result,
             "result_time": d.result_time, "in_delegate_window": any(inside(d, w) for w in delegate)}
            for d in log
        ],
        "exact_match": exact,
        "result_to_speech_s": delays,
        "result_spoken": spoken,
        "result_computed": computed,
        "result_words_delay_s": result_delays,
        "talked_while_waiting": talked,
        "model_words": [{"text": w.text, "start": w.start, "end": w.end} for w in words],
    }


def plot_timeline(path: str, ep, record: dict) -> str:
    """One episode: the user's typed / spoken words, the target model words, the model's words,
    its DELEGATE requests (red) and the results' arrival (purple) on the session clock."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(14, 2.8))
    rows = {"user": 2, "target": 1, "model": 0}

    def words(row, ws, color):
        for start, end, text in ws:
            ax.barh(rows[row], max(end - start, 0.03), left=start, height=0.6, color=color, alpha=0.4)
            ax.text(start, rows[row], text, fontsize=6, va="center", parse_math=False)

    words("user", [(w.start, w.end, w.text) for w in ep.user_words], "tab:blue")
    for ev in ep.user_text:
        ax.text(ev.time, rows["user"] + 0.35, f"typed: {ev.text}", fontsize=7, color="tab:blue", parse_math=False)
    words("target", [(w.start, w.end, w.text) for w in ep.model_words], "tab:green")
    words("model", [(w["start"], w["end"], w["text"]) for w in record["model_words"]], "tab:orange")
    for d in record["delegations"]:
        ax.axvline(d["time"], color="tab:red", lw=1)
        ax.text(d["time"], -0.75, f"DELEGATE {d['request']!r} -> {d['status']}", fontsize=6, color="tab:red",
                parse_math=False)
        if d["result_time"] is not None:
            ax.axvline(d["result_time"], color="tab:purple", lw=1, ls="--")
            ax.text(d["result_time"], 2.6, f"result {d['result']!r}", fontsize=6, color="tab:purple",
                    parse_math=False)
    ax.set_yticks(list(rows.values()), list(rows))
    ax.set_ylim(-1, 3)
    ax.set_xlim(0, ep.duration)
    ax.set_xlabel("session time (s)")
    ax.set_title(f"{ep.episode_id}: expected request {record['expected_request']!r}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _ratio(num: int, den: int) -> float | None:
    return num / den if den else None


def summarise(records: list[dict]) -> dict:
    dels = [d for r in records for d in r["delegations"]]
    delays = [x for r in records for x in r["result_to_speech_s"] if x is not None]
    results = [x for r in records for x in r["result_to_speech_s"]]
    exact = [x for r in records for x in r["exact_match"]]
    spoken = [x for r in records for x in r["result_spoken"]]
    computed_spoken = [x for r in records for x, c in zip(r["result_spoken"], r.get("result_computed", []))
                       if c]
    result_delays = [x for r in records for x in r.get("result_words_delay_s", []) if x is not None]
    talked = [x for r in records for x in r.get("talked_while_waiting", [])]
    ref = [r["reference_delay_s"] for r in records if r["reference_delay_s"] is not None]
    pct = lambda xs, q: float(np.percentile(xs, q)) if xs else None  # noqa: E731
    return {
        "episodes": len(records),
        "delegate_windows": sum(r["delegate_windows"] for r in records),
        "no_delegate_windows": sum(r["no_delegate_windows"] for r in records),
        "delegations": len(dels),
        "recall": _ratio(sum(r["delegate_hits"] for r in records), sum(r["delegate_windows"] for r in records)),
        "precision": _ratio(sum(d["in_delegate_window"] for d in dels), len(dels)),
        "false_alarm_rate": _ratio(
            sum(r["false_alarms"] for r in records), sum(r["no_delegate_windows"] for r in records)
        ),
        "request_exact_match": _ratio(sum(exact), len(exact)),
        "results_delivered": len(results),
        "results_never_followed_by_speech": sum(x is None for x in results),
        "result_spoken_rate": _ratio(sum(spoken), len(spoken)),
        # calculator results only: a lookup answer comes from a fixed table the model could recite
        "computed_results_delivered": len(computed_spoken),
        "computed_result_spoken_rate": _ratio(sum(computed_spoken), len(computed_spoken)),
        "result_to_speech_s": {"median": pct(delays, 50), "p90": pct(delays, 90), "n": len(delays)},
        "result_to_result_words_s": {"median": pct(result_delays, 50), "p90": pct(result_delays, 90),
                                     "n": len(result_delays)},
        "talked_while_waiting_rate": _ratio(sum(talked), len(talked)),
        "reference_result_to_speech_s": {"median": pct(ref, 50), "p90": pct(ref, 90), "n": len(ref)},
    }


def print_table(summary: dict, title: str) -> None:
    def f(x, spec=".3f"):
        return "-" if x is None else format(x, spec)

    d, ref = summary["result_to_speech_s"], summary["reference_result_to_speech_s"]
    rw = summary.get("result_to_result_words_s", {"median": None, "p90": None, "n": 0})
    rows = [
        ("episodes", str(summary["episodes"])),
        ("delegate / no_delegate windows", f"{summary['delegate_windows']} / {summary['no_delegate_windows']}"),
        ("DELEGATE tokens (requests)", str(summary["delegations"])),
        ("recall", f(summary["recall"])),
        ("precision", f(summary["precision"])),
        ("false-alarm rate (no_delegate)", f(summary["false_alarm_rate"])),
        ("request exact match", f(summary["request_exact_match"])),
        ("results delivered", str(summary["results_delivered"])),
        ("talked while the job ran", f(summary.get("talked_while_waiting_rate"))),
        ("result spoken after arrival", f(summary["result_spoken_rate"])),
        ("  computed (calculator) results spoken",
         f"{f(summary.get('computed_result_spoken_rate'))} (n={summary.get('computed_results_delivered', 0)})"),
        ("result -> its own words, median / p90 (s)",
         f"{f(rw['median'], '.2f')} / {f(rw['p90'], '.2f')} (n={rw['n']})"),
        ("result -> first word, median / p90 (s)", f"{f(d['median'], '.2f')} / {f(d['p90'], '.2f')} (n={d['n']})"),
        ("  training data, median / p90 (s)", f"{f(ref['median'], '.2f')} / {f(ref['p90'], '.2f')} (n={ref['n']})"),
    ]
    width = max(len(k) for k, _ in rows)
    print(title)
    for k, v in rows:
        print(f"  {k:<{width}}  {v}")


def run(config) -> dict:
    from flax import nnx

    from interaction_jax.background import DelegationHub, make_runner
    from interaction_jax.data import tasks
    from interaction_jax.data.speech import default_renderer
    from interaction_jax.features.mel import FeatureParams
    from interaction_jax.inference.engine import StreamEngine
    from interaction_jax.inference.session import Scheduler
    from interaction_jax.model.interaction_model import InteractionModel
    from interaction_jax.streams.layout import StreamLayout
    from interaction_jax.streams.pack import EpisodeGrid
    from interaction_jax.streams.tokenizer import make_tokenizer

    if FLAGS.init == "checkpoint" and not FLAGS.workdir:
        raise app.UsageError("--init=checkpoint needs --workdir (or pass --init=random)")
    if FLAGS.num_examples < 1:
        raise app.UsageError(f"--num_examples must be >= 1, got {FLAGS.num_examples}")
    seconds = float(FLAGS.episode_seconds or config.data.episode_seconds)
    delay = float(config.background.sim_delay_s if FLAGS.sim_delay_s is None else FLAGS.sim_delay_s)
    slots = int(min(FLAGS.slots or config.inference.slots, FLAGS.num_examples))
    layout, tokenizer = StreamLayout.from_config(config), make_tokenizer(config.text)
    params = FeatureParams.from_config(config.features)

    t0 = time.perf_counter()
    renderer = default_renderer()
    episodes = [tasks.generate(FLAGS.task, FLAGS.seed + i, duration_s=seconds, renderer=renderer)
                for i in range(FLAGS.num_examples)]
    print(f"[delegation] {len(episodes)} episodes of {seconds:g} s (seeds {FLAGS.seed}..) "
          f"in {time.perf_counter() - t0:.1f} s")

    engine = StreamEngine(config, InteractionModel(config, rngs=nnx.Rngs(int(config.seed))), slots=slots)
    if FLAGS.init == "checkpoint":
        from interaction_jax.inference.params import load_params

        engine.load_params(*load_params(config, FLAGS.workdir, log_prefix="[delegation]"))
    hub = DelegationHub(make_runner(config), tokenizer, release_after_s=delay)
    sched = Scheduler(engine, tokenizer, hub=hub)

    records: list[dict] = []
    t0 = time.perf_counter()
    for b in range(0, len(episodes), slots):
        batch = episodes[b : b + slots]
        sessions = []
        for i, ep in enumerate(batch):
            s = sched.open_session(seed=FLAGS.session_seed + b + i, session_id=ep.episode_id,
                                   metadata={"task": ep.task, "episode_id": ep.episode_id})
            forcing = FLAGS.teacher_force or FLAGS.force_audio
            grid = EpisodeGrid.from_episode(ep, layout, tokenizer, params) if forcing else None
            for chunk in episode_chunks(ep, layout, grid, audio_only=FLAGS.force_audio and not FLAGS.teacher_force):
                s.push(chunk)
            sessions.append(s)
        sched.drain()
        for ep, s in zip(batch, sessions, strict=True):
            s.close()
            records.append(grade_episode(ep, s.delegation_log(), s.transcript().words))
        print(f"[delegation] {len(records)}/{len(episodes)} episodes ({time.perf_counter() - t0:.1f} s)", flush=True)
    hub.runner.close()
    if FLAGS.plot_dir:
        os.makedirs(FLAGS.plot_dir, exist_ok=True)
        chosen = [(ep, r) for ep, r in zip(episodes, records, strict=True) if r["variant"] == "delegate"]
        for ep, r in chosen[: FLAGS.num_plots]:
            print(f"[delegation] wrote {plot_timeline(os.path.join(FLAGS.plot_dir, ep.episode_id + '.png'), ep, r)}")
    summary = summarise(records)
    return {
        "summary": summary,
        "settings": {
            "config": cli.config_filename("config") or DEFAULT_CONFIG,
            "workdir": FLAGS.workdir, "init": FLAGS.init, "num_examples": FLAGS.num_examples, "seed": FLAGS.seed,
            "episode_seconds": seconds, "sim_delay_s": delay, "teacher_force": FLAGS.teacher_force,
            "force_audio": FLAGS.force_audio, "backend": config.background.backend,
            "temperature": float(config.inference.temperature),
            "self_audio": str(config.inference.get("self_audio", "generated")),
            "task": FLAGS.task,
        },
        "episodes": records,
    }


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}: run.py takes only flags")
    if FLAGS.init == "checkpoint" and not FLAGS.workdir:
        raise cli.UserError("--init=checkpoint needs --workdir (or pass --init=random)")
    from interaction_jax.config_lib import load_config

    result = run(FLAGS.config if FLAGS.config is not None else load_config(DEFAULT_CONFIG))
    s = result["settings"]
    source = s["workdir"] if s["init"] == "checkpoint" else "random init"
    source = "teacher-forced oracle" if s["teacher_force"] else source
    source += ", model audio input forced to the target speech" if s["force_audio"] and not s["teacher_force"] else ""
    source += f", hears its own voice as: {s['self_audio']}"
    print_table(result["summary"], f"delegation, {source}, sim_delay_s={s['sim_delay_s']:g}")
    if os.path.dirname(FLAGS.out):
        os.makedirs(os.path.dirname(FLAGS.out), exist_ok=True)
    with open(FLAGS.out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"[delegation] wrote {FLAGS.out}")


if __name__ == "__main__":
    cli.run(main, name="delegation", define_flags=_define_flags)
