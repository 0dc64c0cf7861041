"""The `visual` benchmark: speaking when the picture changes (`--benchmarks=visual`, issue 20).

Episodes of the four visual-proactivity tasks (`data/tasks/visual.py`) on held-out seeds run
through live sessions like every benchmark; the frames go in as `Chunk.video`, one per micro-turn.
Metrics, per task, from the gradable windows (`benchmarks.graded`):

  visual_cue       accuracy = share of examples whose every window passes (the response word
                   said in [event, event + 1.2), nothing before it, nothing after); hit rate;
                   early-speech rate; look-alike false alarms = share of look-alike windows
                   (a change that is not the cue, [change, change + 1.2)) with speech in them;
                   repeat rate (speech after the answer window).
  repcount         accuracy = every count said in its window and none early or extra; count hit
                   rate over all counts; early/extra rate over the silent windows.
  visual_qa        accuracy = "<colour> <shape>" said once it can be answered and not before;
                   answer rate; before-visible rate (speech before the object is up, or before
                   being asked); accuracy by variant (asked before / after the object appears).
  visual_negative  false-alarm rate = share of examples with any speech after the instruction
                   (or from the start when there is none).

Timing errors: per speak window, the start of the nearest utterance of the expected words within
3 s of the window start (the first frame showing the event) minus that start; negative = early.
The turn-based cascade (`baseline.py`) sees video only at an end of turn, so it answers a visual
event only where a user turn happens to end after it (`metadata["reply_available_at"]`).
`plot_visual` draws timelines with frame thumbnails on the time axis for each task's best and
worst examples, and the timing-error histograms.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from interaction_jax.data.episode import Episode, GradingWindow
from interaction_jax.eval.grading import WindowResult, normalise
from interaction_jax.eval.plots import user_rows, word_bars
from interaction_jax.eval.runner import EpisodeRun

VISUAL_TASKS = ("visual_cue", "repcount", "visual_qa", "visual_negative")
TIMED_TASKS = ("visual_cue", "repcount", "visual_qa")
RADIUS_S = 3.0

HEADLINE = [
    ("visual_cue_accuracy", "Visual cue accuracy", "pct"),
    ("visual_cue_lookalike_false_alarm_rate", "  look-alike false alarms", "pct"),
    ("visual_cue_timing_error_median_s", "  timing error median", "s"),
    ("repcount_accuracy", "Rep count accuracy (every count on time)", "pct"),
    ("repcount_count_hit_rate", "  counts on time", "pct"),
    ("repcount_early_or_extra_rate", "  early / extra counts", "pct"),
    ("visual_qa_accuracy", "Visual QA accuracy", "pct"),
    ("visual_qa_before_visible_rate", "  answered too soon", "pct"),
    ("visual_negative_false_alarm_rate", "Visual negatives false alarms", "pct"),
]


def _rate(xs: Sequence[bool]) -> float | None:
    return float(np.mean(xs)) if len(xs) else None


def _pct(xs: Sequence[float], q: float) -> float | None:
    return float(np.percentile(xs, q)) if len(xs) else None


def is_lookalike(ep: Episode, w: GradingWindow) -> bool:
    """Whether a silent window is one opened by a look-alike change (it starts at one)."""
    return w.kind == "silent" and any(abs(w.start - t) < 1e-6 for t in ep.metadata.get("lookalikes", ()))


def nearest_said(run: EpisodeRun, expected: str, t: float, radius: float = RADIUS_S) -> float | None:
    """Start of the utterance containing every word of `expected` that starts nearest to t (within radius)."""
    need = normalise(expected)
    if not need:
        return None
    starts = [s for s, _e, ws in run.utterances
              if abs(s - t) <= radius and all(n in {tok for w in ws for tok in normalise(w.text)} for n in need)]
    return min(starts, key=lambda s: abs(s - t)) if starts else None


def _first_speak(wr) -> float:
    return min((w.start for w, _ in wr if w.kind == "speak"), default=np.inf)


def _timing(items) -> list[float]:
    out = []
    for _ep, run, wr in items:
        for w, _ in wr:
            if w.kind == "speak":
                s = nearest_said(run, w.expected, w.start)
                if s is not None:
                    out.append(round(s - w.start, 3))
    return out


def visual(items) -> dict:
    """Metrics of the visual benchmark from `benchmarks.graded` items (definitions: module docstring)."""
    by_task = {t: [it for it in items if it[0].task == t] for t in VISUAL_TASKS}
    out: dict = {"timing_errors_s": {}, "examples": len(items)}

    def exact(its) -> list[bool]:
        return [all(r.passed for _, r in wr) for _, _, wr in its if wr]

    def timing(task: str, its) -> None:
        errs = _timing(its)
        out["timing_errors_s"][task] = errs
        out[f"{task}_timing_error_median_s"] = _pct(errs, 50)
        out[f"{task}_timing_error_p10_s"] = _pct(errs, 10)
        out[f"{task}_timing_error_p90_s"] = _pct(errs, 90)

    cue = [it for it in by_task["visual_cue"] if any(w.kind == "speak" for w, _ in it[2])]
    early, looks, repeat = [], [], []
    for ep, _run, wr in cue:
        first = _first_speak(wr)
        for w, r in wr:
            if w.kind != "silent":
                continue
            if is_lookalike(ep, w):
                looks.append(not r.passed)
            elif w.end <= first + 1e-9:
                early.append(not r.passed)
            else:
                repeat.append(not r.passed)
    out.update(visual_cue_accuracy=_rate(exact(cue)),
               visual_cue_hit_rate=_rate([r.passed for _, _, wr in cue for w, r in wr if w.kind == "speak"]),
               visual_cue_early_rate=_rate(early), visual_cue_lookalike_false_alarm_rate=_rate(looks),
               visual_cue_lookalike_windows=len(looks), visual_cue_repeat_rate=_rate(repeat),
               visual_cue_examples=len(cue))
    timing("visual_cue", cue)

    reps = [it for it in by_task["repcount"] if any(w.kind == "speak" for w, _ in it[2])]
    counts = [r.passed for _, _, wr in reps for w, r in wr if w.kind == "speak"]
    out.update(repcount_accuracy=_rate(exact(reps)), repcount_count_hit_rate=_rate(counts),
               repcount_early_or_extra_rate=_rate([not r.passed for _, _, wr in reps for w, r in wr
                                                   if w.kind == "silent"]),
               repcount_counts=len(counts), repcount_examples=len(reps))
    timing("repcount", reps)

    qa = [it for it in by_task["visual_qa"] if any(w.kind == "speak" for w, _ in it[2])]
    too_soon = [not r.passed for _, _, wr in qa for w, r in wr
                if w.kind == "silent" and w.end <= _first_speak(wr) + 1e-9]
    out.update(visual_qa_accuracy=_rate(exact(qa)),
               visual_qa_answer_rate=_rate([r.passed for _, _, wr in qa for w, r in wr if w.kind == "speak"]),
               visual_qa_before_visible_rate=_rate(too_soon), visual_qa_examples=len(qa))
    for variant in ("asked_before", "asked_after"):
        its = [it for it in qa if it[0].metadata.get("variant") == variant]
        out[f"visual_qa_accuracy_{variant}"] = _rate(exact(its))
    timing("visual_qa", qa)

    neg = [it for it in by_task["visual_negative"] if it[2]]
    out.update(visual_negative_false_alarm_rate=_rate([not all(r.passed for _, r in wr) for _, _, wr in neg]),
               visual_negative_examples=len(neg))
    return out


# ---- plots --------------------------------------------------------------------------------------
def plot_visual_example(path: str, episode: Episode, runs: Sequence[EpisodeRun], results: Sequence[WindowResult],
                        title: str = "", max_thumbs: int = 25) -> str:
    """One PNG: frame thumbnails along the time axis over the timeline of user / target / system words.

    Visual events are green lines, look-alike changes grey dashed ones; grading windows are shaded
    green (passed) or red (failed).
    """
    import warnings

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = ["user", "target", *[r.system for r in runs]]
    fig, (top, ax) = plt.subplots(2, 1, figsize=(14, 2.2 + 0.55 * len(rows)), sharex=True,
                                  gridspec_kw={"height_ratios": [1.3, 0.5 * len(rows) + 0.6]})
    d = episode.duration
    frames = episode.video
    step = max(1, int(np.ceil(len(frames) / max_thumbs)))
    width = d / max(1, int(np.ceil(len(frames) / step)))
    for f in frames[::step]:
        top.imshow(f.image, extent=(f.time, f.time + 0.95 * width, 0, 1), aspect="auto", interpolation="nearest")
    top.set_ylim(0, 1)
    top.set_yticks([])
    top.set_title(title or f"{episode.episode_id} ({episode.task})", fontsize=9)
    y = {name: len(rows) - 1 - i for i, name in enumerate(rows)}

    user_rows(ax, y["user"], episode)
    word_bars(ax, y["target"], episode.model_words, "tab:green")
    for run in runs:
        word_bars(ax, y[run.system], run.words, "tab:orange")
    for r in results:
        ax.axvspan(r.start, r.end, color="tab:green" if r.passed else "tab:red", alpha=0.12)
    for a in (top, ax):
        for ev in episode.metadata.get("visual_events", ()):
            a.axvline(ev["time"], color="tab:green", lw=1.2)
        for t in episode.metadata.get("lookalikes", ()):
            a.axvline(t, color="0.4", lw=0.9, ls="--")
    ax.set_yticks([y[n] for n in rows], rows)
    ax.set_xlim(0, d)
    ax.set_ylim(-0.8, len(rows) - 0.2)
    ax.set_xlabel("episode time (s); green line: visual event, dashed: look-alike change")
    with warnings.catch_warnings():  # an untrained model's bytes may have no glyph
        warnings.simplefilter("ignore", UserWarning)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_timing_errors(path: str, errors: dict[str, dict[str, Sequence[float]]]) -> str:
    """Histograms of response time - event time per timed task, one colour per system."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(TIMED_TASKS), figsize=(4 * len(TIMED_TASKS), 3), sharey=True)
    for ax, task in zip(axes, TIMED_TASKS):
        for system, by_task in errors.items():
            e = by_task.get(task, [])
            if len(e):
                ax.hist(e, bins=24, range=(-RADIUS_S, RADIUS_S), alpha=0.5, label=f"{system} (n={len(e)})")
        ax.axvline(0, color="k", lw=0.8)
        ax.set_title(task, fontsize=9)
        ax.set_xlabel("response start - event (s)")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_visual(results: dict, out_dir: str, episodes: dict[str, Episode] | None = None) -> list[str]:
    """Best and worst model example of each visual task (thumbnail timelines) and the timing histograms."""
    from interaction_jax.eval.plots import run_from_json

    rows = results.get("examples", {}).get("visual", [])
    episodes = dict(episodes or {})
    paths = []
    for task in VISUAL_TASKS:
        model = sorted((r for r in rows if r["system"] == "model" and r["task"] == task and r["score"] is not None),
                       key=lambda r: (r["score"], r["episode_id"]))
        for label, row in (("worst", model[0]), ("best", model[-1])) if model else ():
            eid = row["episode_id"]
            if eid not in episodes:
                from interaction_jax.data import tasks

                name, seed = eid.rsplit("-", 1)
                mode = row.get("instruction_mode")
                name = f"{name}_{mode}" if mode in ("typed", "spoken") else name
                episodes[eid] = tasks.generate(name, int(seed), duration_s=results["episode_seconds"])
            ep = episodes[eid]
            runs = [run_from_json(r["output"], ep) for r in rows if r["episode_id"] == eid]
            windows = [WindowResult(**w) for w in row["windows"]]
            paths.append(plot_visual_example(os.path.join(out_dir, f"visual_{task}_{label}_{eid}.png"), ep, runs,
                                             windows, title=f"{task} {label}: {eid} (model score {row['score']:.2f})"))
    errs = {s: m["visual"]["timing_errors_s"] for s, m in results.get("metrics", {}).items() if "visual" in m}
    if errs:
        paths.append(plot_timing_errors(os.path.join(out_dir, "visual_timing_errors.png"), errs))
    return paths
