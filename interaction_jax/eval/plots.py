"""Timelines of graded examples: who said what when, and which grading windows passed."""

from __future__ import annotations

import os
from collections.abc import Sequence

from interaction_jax.data.episode import Episode, Word
from interaction_jax.eval.grading import WindowResult
from interaction_jax.eval.runner import EpisodeRun


def word_bars(ax, y: float, words: Sequence[Word], color: str) -> None:
    """One timeline row: a bar per word from its start to its end, labelled with the word."""
    for w in words:
        ax.barh(y, max(w.end - w.start, 0.03), left=w.start, height=0.6, color=color, alpha=0.5)
        ax.text(w.start, y, w.text, fontsize=6, va="center", parse_math=False)


def user_rows(ax, y: float, episode: Episode) -> None:
    """The user's row: spoken words as bars, typed messages as labels above them."""
    word_bars(ax, y, episode.user_words, "tab:blue")
    for ev in episode.user_text:
        ax.text(ev.time, y + 0.35, f"typed: {ev.text}", fontsize=6, color="tab:blue", parse_math=False)


def plot_example(path: str, episode: Episode, runs: Sequence[EpisodeRun], results: Sequence[WindowResult],
                 title: str = "") -> str:
    """One PNG: user / other-voice / target words, each system's words, grading windows (green pass, red fail)."""
    import warnings

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = ["user", "other", "target", *[r.system for r in runs]]
    fig, ax = plt.subplots(figsize=(14, 1.0 + 0.6 * len(rows)))
    y = {name: len(rows) - 1 - i for i, name in enumerate(rows)}

    def words(row: str, ws, color: str) -> None:
        word_bars(ax, y[row], ws, color)

    user_rows(ax, y["user"], episode)
    words("other", episode.other_words, "tab:gray")
    words("target", episode.model_words, "tab:green")
    for run in runs:
        words(run.system, run.words, "tab:orange")
        for t, name in run.events:  # utterance marks as ticks (green start, red end); others labelled
            color = {"SPEECH_START": "tab:green", "SPEECH_END": "tab:red"}.get(name, "k")
            ax.plot([t, t], [y[run.system] - 0.35, y[run.system] + 0.35], color=color, lw=0.8)
            if color == "k":
                ax.text(t, y[run.system] + 0.32, name, fontsize=5, va="bottom", parse_math=False)
    for r in results:
        ax.axvspan(r.start, r.end, color="tab:green" if r.passed else "tab:red", alpha=0.12)
        ax.text(r.start, len(rows) - 0.4, f"{r.kind}{' ' + r.expected if r.expected else ''}", fontsize=6,
                color="tab:green" if r.passed else "tab:red", parse_math=False)
    ax.set_yticks([y[n] for n in rows], rows)
    ax.set_xlim(0, episode.duration)
    ax.set_ylim(-0.8, len(rows) - 0.2)
    ax.set_xlabel("episode time (s)")
    ax.set_title(title or f"{episode.episode_id} ({episode.task})", fontsize=9)
    with warnings.catch_warnings():  # an untrained model's bytes may have no glyph
        warnings.simplefilter("ignore", UserWarning)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_timing_errors(path: str, errors_by_system: dict[str, Sequence[float]]) -> str:
    """Histogram of TimeSpeak timing errors (said - requested, seconds) per system."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3))
    for name, errs in errors_by_system.items():
        if len(errs):
            ax.hist(errs, bins=24, range=(-3, 3), alpha=0.5, label=f"{name} (n={len(errs)})")
    ax.axvspan(-0.4, 1.0, color="tab:green", alpha=0.1, label="graded window")
    ax.set_xlabel("word start - requested time (s)")
    ax.set_ylabel("count")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def run_from_json(output: dict, episode: Episode) -> EpisodeRun:
    """An `EpisodeRun` back from its `to_json()` (words and events; enough to plot and grade)."""
    return EpisodeRun(episode.episode_id, episode.task, episode.duration,
                      [Word(w["text"], w["start"], w["end"]) for w in output["words"]],
                      events=[(e["time"], e["event"]) for e in output["events"]],
                      delegations=[(d["time"], d["request"]) for d in output.get("delegations", [])],
                      system=output["system"])


def plot_best_worst(results: dict, out_dir: str, episodes: dict[str, Episode] | None = None) -> list[str]:
    """From an evaluation's results dict (results.json): each benchmark's best and worst model example
    (every system's output on it) and the TimeSpeak timing-error histogram; returns the PNG paths.

    `episodes` maps episode ids to episodes; missing ones are re-rendered from the seed in their id.
    """
    from interaction_jax.data import tasks

    episodes = dict(episodes or {})
    paths = []
    for b, rows in results["examples"].items():
        model = sorted((r for r in rows if r["system"] == "model" and r["score"] is not None),
                       key=lambda r: (r["score"], r["episode_id"]))
        for label, row in (("worst", model[0]), ("best", model[-1])) if model else ():
            eid = row["episode_id"]
            if eid not in episodes:
                task, seed = eid.rsplit("-", 1)
                episodes[eid] = tasks.generate(task, int(seed), duration_s=results["episode_seconds"])
            ep = episodes[eid]
            runs = [run_from_json(r["output"], ep) for r in rows if r["episode_id"] == eid]
            windows = [WindowResult(**w) for w in row["windows"]]
            path = os.path.join(out_dir, f"{b}_{label}_{eid}.png")
            paths.append(plot_example(path, ep, runs, windows,
                                      title=f"{b} {label}: {eid} (model score {row['score']:.2f})"))
    errs = {s: m["timespeak"]["timing_errors_s"] for s, m in results["metrics"].items() if "timespeak" in m}
    if errs:
        paths.append(plot_timing_errors(os.path.join(out_dir, "timespeak_timing_errors.png"), errs))
    return paths
