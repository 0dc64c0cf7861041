"""Timelines of graded examples: who said what when, and which grading windows passed."""

from __future__ import annotations

from collections.abc import Sequence

from interaction_jax.data.episode import Episode
from interaction_jax.eval.grading import WindowResult
from interaction_jax.eval.runner import EpisodeRun

_ROWS = {"user": 3, "other": 2, "target": 1, "system": 0}


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
        for w in ws:
            ax.barh(y[row], max(w.end - w.start, 0.03), left=w.start, height=0.6, color=color, alpha=0.5)
            ax.text(w.start, y[row], w.text, fontsize=6, va="center", parse_math=False)

    words("user", episode.user_words, "tab:blue")
    for ev in episode.user_text:
        ax.text(ev.time, y["user"] + 0.35, f"typed: {ev.text}", fontsize=6, color="tab:blue", parse_math=False)
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
