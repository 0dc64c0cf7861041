"""Episodes: time-stamped streams of one interaction, the unit every data source produces.

Times are seconds from the start of the episode. Audio is mono float32 at `sample_rate`
(16 kHz by default). The *user* channel carries everything the model hears from outside
(user speech, other talkers, background speech); the *model* channel is the ground-truth
model speech. Packing into the micro-turn layout happens in `interaction_jax.streams`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np


@dataclasses.dataclass(frozen=True)
class Word:
    """A spoken word with its start/end time in seconds."""

    text: str
    start: float
    end: float


@dataclasses.dataclass(frozen=True)
class TextEvent:
    """Text typed by the user, arriving at `time` seconds."""

    text: str
    time: float


@dataclasses.dataclass(frozen=True)
class BackgroundEvent:
    """A delegation `request` (emitted by the model) or a `result`/`error` arriving from the background model.

    `job_id` links a result to its request.
    """

    kind: str  # "request" | "result" | "error"
    time: float
    text: str
    job_id: int = 0


@dataclasses.dataclass(frozen=True)
class VideoFrame:
    """One RGB frame (H, W, 3) uint8 shown at `time` seconds."""

    time: float
    image: np.ndarray


@dataclasses.dataclass(frozen=True)
class GradingWindow:
    """What the model is expected to do (or not do) in [start, end) seconds; used by evaluation.

    `kind` names the check, e.g. "speak" (say `expected` inside the window), "silent"
    (say nothing), "stop" (stop speaking within the window).
    """

    kind: str
    start: float
    end: float
    expected: str = ""


@dataclasses.dataclass
class Episode:
    """One interaction. Ground-truth model behaviour is in `model_words` / `model_audio` / requests."""

    episode_id: str
    duration: float
    sample_rate: int = 16000
    user_audio: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.float32))
    model_audio: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.float32))
    user_words: list[Word] = dataclasses.field(default_factory=list)
    model_words: list[Word] = dataclasses.field(default_factory=list)
    other_words: list[Word] = dataclasses.field(default_factory=list)  # third voices (in the user channel)
    user_text: list[TextEvent] = dataclasses.field(default_factory=list)
    video: list[VideoFrame] = dataclasses.field(default_factory=list)
    background: list[BackgroundEvent] = dataclasses.field(default_factory=list)
    grading: list[GradingWindow] = dataclasses.field(default_factory=list)
    task: str = ""
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict)
    # The third voices as mixed into user_audio (other_words' audio, gain applied), kept so the
    # user channel without them is user_audio - other_audio (FDB v1.5's clean input). Empty:
    # no third voice, or not known (recordings, stores written before the field existed).
    other_audio: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.float32))

    def __post_init__(self):
        self.user_audio = np.asarray(self.user_audio, np.float32)
        self.model_audio = np.asarray(self.model_audio, np.float32)
        self.other_audio = np.asarray(self.other_audio, np.float32)
        n = int(round(self.duration * self.sample_rate))
        for name in ("user_audio", "model_audio", "other_audio"):
            a = getattr(self, name)
            if a.ndim != 1:
                raise ValueError(f"Episode {self.episode_id}: {name} must be mono 1-D, got shape {a.shape}")
            if a.size == 0:
                if name == "other_audio":
                    continue  # stays empty: no track
                setattr(self, name, np.zeros(n, np.float32))
            elif a.size != n:
                # Pad/trim to the declared duration so both channels are time-aligned.
                fixed = np.zeros(n, np.float32)
                fixed[: min(n, a.size)] = a[:n]
                setattr(self, name, fixed)

    @property
    def num_samples(self) -> int:
        return int(round(self.duration * self.sample_rate))
