"""Episodes through the streaming engine: one `Scheduler` session per episode, up to `slots` at once.

Every benchmark number comes from here: the user channel of a held-out episode is cut into
200 ms chunks and pushed through a live session (the same path as `python -m
interaction_jax.stream`), the model's sampled text and mel come back, and the time-stamped
streams are graded (`grading.py`). There is no teacher forcing: the model hears its own output.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence

import numpy as np

from interaction_jax.data.episode import Episode, Word
from interaction_jax.eval.episodes import episode_chunks
from interaction_jax.streams import pack
from interaction_jax.streams.text_streams import UTTERANCE_GAP_S
from interaction_jax.streams.tokenizer import Control


@dataclasses.dataclass
class EpisodeRun:
    """What a system (the model, or a baseline) did during one episode, on the episode clock."""

    episode_id: str
    task: str
    duration: float
    words: list[Word]  # spoken words, start/end in seconds
    events: list[tuple[float, str]] = dataclasses.field(default_factory=list)  # control tokens (time, name)
    delegations: list[tuple[float, str]] = dataclasses.field(default_factory=list)  # (time, request text)
    mel: np.ndarray | None = None  # [frames, M] generated log-mel, frame 0 at mel_start
    mel_start: float = 0.0
    system: str = "model"
    # (onset, offset) of speech in the system's own waveform (eval/audio_timing.py VAD), when computed
    speech: list[tuple[float, float]] | None = None

    @property
    def utterances(self) -> list[Utterance]:
        """(start, end, words) of each utterance; see `utterances`."""
        return utterances(self.words, self.events)

    def to_json(self) -> dict:
        return {
            "episode_id": self.episode_id, "task": self.task, "system": self.system, "duration": self.duration,
            "words": [{"text": w.text, "start": round(w.start, 3), "end": round(w.end, 3)} for w in self.words],
            "events": [{"time": round(t, 3), "event": e} for t, e in self.events],
            "delegations": [{"time": round(t, 3), "request": r} for t, r in self.delegations],
            **({"speech_audio": [[round(a, 3), round(b, 3)] for a, b in self.speech]} if self.speech is not None
               else {}),
        }  # fmt: skip


Utterance = tuple[float, float, list[Word]]  # (start, end, words)


def utterances(words: Sequence[Word], events: Sequence[tuple[float, str]] = ()) -> list[Utterance]:
    """Groups words into utterances: a new one after a gap > UTTERANCE_GAP_S (the training data's
    rule) or where the model marked a boundary (SPEECH_END / SPEECH_START between two words).
    An utterance spans [first word start, last word end]."""
    marks = sorted(t for t, name in events if name in (Control.SPEECH_END.name, Control.SPEECH_START.name))
    out: list[Utterance] = []
    for w in sorted(words, key=lambda w: w.start):
        if out:
            start, end, ws = out[-1]
            boundary = any(ws[-1].start < m <= w.start for m in marks)
            if w.start - end <= UTTERANCE_GAP_S and not boundary:
                out[-1] = (start, max(end, w.end), [*ws, w])
                continue
        out.append((w.start, w.end, [w]))
    return out


def run_episodes(engine, episodes: Sequence[Episode], *, seed: int = 0, scripted_background: bool = True,
                 log_every: int = 1, scheduler=None) -> list[EpisodeRun]:
    """Runs each episode as a live session; `engine.slots` sessions share each engine tick.

    Sessions get seeds `seed + index` (sampling is per session, so results do not depend on
    which episodes share a tick). Returns one `EpisodeRun` per episode, in order.
    """
    from interaction_jax.inference.session import Scheduler

    sched = scheduler if scheduler is not None else Scheduler(engine)
    layout = engine.layout
    runs: list[EpisodeRun | None] = [None] * len(episodes)
    t0 = time.perf_counter()
    ticks = 0
    for g0 in range(0, len(episodes), engine.slots):
        group = list(range(g0, min(len(episodes), g0 + engine.slots)))
        sessions = {}
        for i in group:
            ep = episodes[i]
            s = sched.open_session(seed=seed + i, session_id=f"eval-{i}-{ep.episode_id}")
            for chunk in episode_chunks(ep, layout, scripted_background=scripted_background):
                s.push(chunk)
            sessions[i] = s
        while any(s.pending for s in sessions.values()):
            sched.tick()
            ticks += 1
        for i, s in sessions.items():
            ep = episodes[i]
            tr = s.transcript()
            runs[i] = EpisodeRun(
                ep.episode_id, ep.task, ep.duration, [w for w in tr.words if w.start < ep.duration],
                events=list(tr.events), delegations=pack.delegation_requests(tr, sched.tokenizer),
                mel=tr.mel, mel_start=tr.mel_start,
            )
            s.close()
        if log_every and (g0 // engine.slots) % log_every == 0:
            done = group[-1] + 1
            dt = time.perf_counter() - t0
            print(f"[eval] {done}/{len(episodes)} episodes through the engine ({ticks} ticks, {dt:.0f} s, "
                  f"{dt / max(ticks, 1) * 1e3:.0f} ms/tick)", flush=True)
    return [r for r in runs if r is not None]
