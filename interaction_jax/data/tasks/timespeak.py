"""TimeSpeak: speak a word at user-specified times ("in three seconds, say apple").

Two variants (seeded): a single delayed request, or "say X every N seconds until I say
stop". Times count from when the instruction was given: the end of the spoken instruction,
or a typed message's arrival (as the user would count) unless the model could not have read
it by then (read time, see `common.typed_read_s`), in which case from the read time. The
model starts the word 0-0.15 s after the requested time.

Grading (tolerances): `speak` in [t - 0.4, t + 1.0) per requested time t (the model's word
must start inside); `silent` from the latency floor after the instruction to t - 0.4 (don't
speak early); after "stop", `silent` until one period past the next would-be time.
"""

from __future__ import annotations

import numpy as np

from interaction_jax.data.episode import Episode
from interaction_jax.data.speech import SpeechRenderer
from interaction_jax.data.tasks.common import MIN_LATENCY_S, EpisodeBuilder, number_word

WORDS = ("apple", "banana", "hello", "orange", "river", "tiger", "pencil", "rocket", "yellow", "window")
CHATTER = (
    "I will just wait here for a moment.",
    "Let me see if this works.",
    "Okay, I am ready when you are.",
)
EARLY_S, LATE_S = 0.4, 1.0  # speak-window tolerances around a requested time
STOP_TEXT = "Okay, stop."


def _anchor(b: EpisodeBuilder, t0: float, ready: float, first_delay: float) -> float:
    """Time the requested delays count from (see the module docstring)."""
    if b.typed and t0 + first_delay >= ready + MIN_LATENCY_S:
        return t0
    return ready


def generate(seed: int, *, duration_s: float, renderer: SpeechRenderer, instruction_mode: str = "mixed") -> Episode:
    b = EpisodeBuilder("timespeak", seed, duration_s, renderer, instruction_mode)
    rng = b.rng
    word = str(rng.choice(WORDS))
    repeat = bool(rng.random() < 0.4)
    t0 = float(rng.uniform(0.3, 1.0))
    if not repeat:
        delay = int(rng.integers(2, 6))
        text = f"In {number_word(delay)} seconds, say {word}."
        ready = b.instruct(text, t0)
        anchor = _anchor(b, t0, ready, delay)
        delay = max(1, min(delay, int(np.floor(b.duration - anchor - LATE_S))))
        times = [anchor + delay]
        if rng.random() < 0.4:  # the user keeps talking while the model waits
            b.user_says(str(rng.choice(CHATTER)), ready + float(rng.uniform(0.3, 0.8)))
        b.metadata.update(variant="once", delay_s=delay)
    else:
        period = int(rng.integers(2, 4))
        text = f"Say {word} every {number_word(period)} seconds until I say stop."
        ready = b.instruct(text, t0)
        anchor = _anchor(b, t0, ready, period)
        room = int(np.floor((b.duration - anchor - 1.5) / period))
        reps = int(np.clip(rng.integers(2, 4), 1, max(room, 1)))
        times = [anchor + k * period for k in range(1, reps + 1)]
        b.metadata.update(variant="repeat", period_s=period)
    times = [max(t, ready + MIN_LATENCY_S) for t in times]  # only binds for very short episodes
    b.window("silent", ready + MIN_LATENCY_S, times[0] - EARLY_S)
    for t in times:
        b.model_says(word, t + float(rng.uniform(0.0, 0.15)))
        b.window("speak", t - EARLY_S, t + LATE_S, word)
    if repeat:
        stop_start = times[-1] + 0.6 + float(rng.uniform(0.0, 0.2))
        stop_ready = b.instruct(STOP_TEXT, stop_start)
        b.window("silent", stop_ready + MIN_LATENCY_S, times[-1] + 2 * period)
        b.metadata["stop_time"] = stop_ready
    b.metadata.update(instruction_end=ready, time_anchor=anchor, requested_times=times, word=word)
    return b.finish()
