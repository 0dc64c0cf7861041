"""The tasks' grading windows checked on a system's time-stamped text stream (deterministic).

Window kinds are defined where the tasks create them (`data/tasks/common.py`); here, on an
`EpisodeRun` (words with start/end, control events, utterances = words grouped as in training):

  speak     an utterance *starts* in [start, end) and contains every word of `expected`
            (case and punctuation ignored; it may run past `end`), or the words of
            `expected` are said in sequence starting in [start, end) (an answer that
            follows a filler within the utterance gap, "Let me check. It is 42.")
  silent    no word starts in [start, end)
  stop      the system is not speaking at `end` (an utterance that covers the window start
            has ended by then); `latency` = that utterance's end - start
  no_stop   one utterance spans the whole window (within one micro-turn at either edge)
  delegate / no_delegate   a DELEGATE control token is / is not emitted in [start, end)

Times are those of the text stream (a word starts at its first token's slot time and ends
one slot after its last token), so model and baseline are graded by the same clock.
"""

from __future__ import annotations

import dataclasses
import re

from interaction_jax.data.episode import Episode, GradingWindow
from interaction_jax.eval.runner import EpisodeRun
from interaction_jax.streams.tokenizer import Control

EDGE_TOL_S = 0.2  # one micro-turn: the text stream's time resolution for the end of speech


def normalise(text: str) -> list[str]:
    """Lower-case word tokens without punctuation ("Paris." -> ["paris"])."""
    return re.findall(r"[a-z0-9]+", text.lower())


def contains(words: list[str], expected: str) -> bool:
    need = normalise(expected)
    have = set(words)
    return bool(need) and all(w in have for w in need)


@dataclasses.dataclass
class WindowResult:
    """One grading window's outcome (and, for speak/stop, when it happened)."""

    kind: str
    start: float
    end: float
    expected: str
    passed: bool
    time: float | None = None  # speak: start of the matching utterance; stop: end of speech
    latency: float | None = None  # stop: end of speech - window start; speak: utterance start - window start
    speaking_at_start: bool | None = None  # stop / no_stop: was the system speaking when the window opened

    def to_json(self) -> dict:
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in dataclasses.asdict(self).items()}


def said_at(run: EpisodeRun, expected: str, start: float, end: float) -> float | None:
    """Start time of the first run of words spelling `expected` whose first word starts in [start, end)."""
    need = normalise(expected)
    if not need:
        return None
    seq = [(tok, w.start) for w in sorted(run.words, key=lambda w: w.start) for tok in normalise(w.text)]
    toks = [t for t, _ in seq]
    for i in range(len(seq) - len(need) + 1):
        if toks[i : i + len(need)] == need and start <= seq[i][1] < end:
            return seq[i][1]
    return None


def speaking_at(run: EpisodeRun, t: float) -> tuple[float, float] | None:
    """The (start, end) of the utterance covering time t, if any."""
    for s, e, _ in run.utterances:
        if s <= t < e:
            return s, e
    return None


def grade_window(run: EpisodeRun, w: GradingWindow) -> WindowResult:
    """Checks one window (see the module docstring)."""
    utts = run.utterances
    if w.kind == "speak":
        for s, _e, ws in utts:
            if w.start <= s < w.end and contains([t for x in ws for t in normalise(x.text)], w.expected):
                return WindowResult(w.kind, w.start, w.end, w.expected, True, time=s, latency=s - w.start)
        s = said_at(run, w.expected, w.start, w.end)
        return WindowResult(w.kind, w.start, w.end, w.expected, s is not None, time=s,
                            latency=None if s is None else s - w.start)
    if w.kind == "silent":
        first = next((x.start for x in run.words if w.start <= x.start < w.end), None)
        return WindowResult(w.kind, w.start, w.end, w.expected, first is None, time=first)
    if w.kind == "stop":
        cover = speaking_at(run, w.start)
        still = speaking_at(run, w.end) is not None
        end = cover[1] if cover else None
        return WindowResult(w.kind, w.start, w.end, w.expected, not still, time=end,
                            latency=None if end is None else end - w.start, speaking_at_start=cover is not None)
    if w.kind == "no_stop":
        ok = any(s <= w.start + EDGE_TOL_S and e >= w.end - EDGE_TOL_S for s, e, _ in utts)
        cover = speaking_at(run, w.start + EDGE_TOL_S)
        return WindowResult(w.kind, w.start, w.end, w.expected, ok, speaking_at_start=cover is not None)
    if w.kind in ("delegate", "no_delegate"):
        t = next((t for t, name in run.events if name == Control.DELEGATE.name and w.start <= t < w.end), None)
        return WindowResult(w.kind, w.start, w.end, w.expected, (t is not None) == (w.kind == "delegate"), time=t)
    raise ValueError(f"grading: unknown window kind {w.kind!r} (expected speak, silent, stop, no_stop, "
                     "delegate or no_delegate)")


def grade_episode(episode: Episode, run: EpisodeRun) -> list[WindowResult]:
    """Every grading window of the episode, in order."""
    if run.episode_id != episode.episode_id:
        raise ValueError(f"grading: run of {run.episode_id!r} graded against episode {episode.episode_id!r}")
    return [grade_window(run, w) for w in episode.grading]


def ground_truth_run(episode: Episode, tokenizer=None, config=None) -> EpisodeRun:
    """The episode's own target behaviour as an `EpisodeRun` (an oracle; grading it checks the graders).

    Words go through the same packing + unpacking as model output (with `config`'s layout and
    text settings; default: the base config), so their times carry the same text-stream
    quantisation as a model's.
    """
    import numpy as np

    from interaction_jax.config_lib import base_config
    from interaction_jax.streams import pack
    from interaction_jax.streams.layout import StreamLayout
    from interaction_jax.streams.tokenizer import make_tokenizer

    config = base_config() if config is None else config
    layout = StreamLayout.from_config(config)
    tokenizer = tokenizer or make_tokenizer(config.text)
    grid = pack.EpisodeGrid.from_episode(episode, layout, tokenizer)
    tr = pack.unpack(layout, tokenizer, np.arange(grid.num_turns), grid.model_text)
    return EpisodeRun(episode.episode_id, episode.task, episode.duration, tr.words, events=list(tr.events),
                      delegations=pack.delegation_requests(tr, tokenizer), system="ground truth")
