"""Shared machinery of the synthetic tasks: one `EpisodeBuilder` per episode.

Conventions every task follows (the evaluation and packing code rely on them):
  * All randomness comes from one `np.random.default_rng(seed)` drawn in a fixed order, so a
    seed gives bitwise-identical episodes.
  * The model never starts speaking earlier than `MIN_LATENCY_S` (0.2 s, one micro-turn)
    after the input that triggers it; its output for micro-turn t plays in [(t+1)T, (t+2)T).
  * A *typed* message arrives whole at `TextEvent.time`, but the model reads it through a few
    text slots per micro-turn. We therefore treat it as understood only at
    `time + typed_read_s(text)` (a byte tokenizer with 4 slots per 200 ms reads 20 bytes/s)
    and schedule reactions after that. `metadata["instruction_end"]` stores this time.
  * user_audio = user + other voices (+ background speech at low gain) + a small noise floor;
    `Episode.other_audio` keeps the other voices alone, so user_audio - other_audio is the user
    with the same noise floor and nobody else (FDB v1.5's clean input, `eval/fdb_v15.py`).
  * Grading windows: `speak` = a model utterance must *start* inside [start, end) and contain
    `expected` (it may run past `end`); `silent` = no model word starts inside; `stop` = model
    speech has ended by `end`; `no_stop` = the model keeps speaking across the whole window;
    `delegate` / `no_delegate` = a request is / is not emitted inside the window.
"""

from __future__ import annotations

import numpy as np

from interaction_jax.data.episode import Episode, GradingWindow, TextEvent, VideoFrame, Word
from interaction_jax.data.speech import (
    MODEL_VOICE,
    OTHER_VOICE,
    USER_VOICE,
    RenderedSpeech,
    SpeechRenderer,
    VoiceSpec,
    place,
)

MIN_LATENCY_S = 0.2  # one micro-turn: the response-latency floor of the layout
TYPED_BYTES_PER_S = 20.0  # 4 text slots per 200 ms micro-turn, one byte token each (+ TEXT_END)
NOISE_STD = 0.002  # noise floor of the user channel (about -54 dBFS)
BACKGROUND_GAIN = 0.3  # background speech (a TV, people nearby) relative to the user
VIDEO_PROB = 0.5
VIDEO_SIZE = 160


# How instructions reach the model: "mixed" (seeded, half typed), or all "typed" / all "spoken"
# (curriculum variants such as the task "delegation_typed").
INSTRUCTION_MODES = ("mixed", "typed", "spoken")


def typed_read_s(text: str) -> float:
    """Seconds the model needs to read a typed message through the text slots."""
    return (len(text.encode("utf-8")) + 1) / TYPED_BYTES_PER_S


def number_word(n: int) -> str:
    """English word for 1..12 (used in spoken and typed instructions)."""
    words = "one two three four five six seven eight nine ten eleven twelve".split()
    return words[n - 1]


class EpisodeBuilder:
    """Accumulates the streams of one episode; `finish` mixes, clips and returns the `Episode`."""

    def __init__(self, task: str, seed: int, duration_s: float, renderer: SpeechRenderer,
                 instruction_mode: str = "mixed"):
        if duration_s <= 0:
            raise ValueError(f"tasks: duration_s must be > 0, got {duration_s}")
        if instruction_mode not in INSTRUCTION_MODES:
            raise ValueError(f"tasks: instruction_mode must be one of {INSTRUCTION_MODES}, got {instruction_mode!r}")
        self.task, self.seed, self.duration = task, int(seed), float(duration_s)
        self.renderer = renderer
        self.sr = renderer.sample_rate
        self.rng = np.random.default_rng(seed)
        n = int(round(self.duration * self.sr))
        self.user_track = np.zeros(n, np.float32)
        self.model_track = np.zeros(n, np.float32)
        self.other_track = np.zeros(n, np.float32)  # the third voices alone (also mixed into user_track)
        self.user_words: list[Word] = []
        self.other_words: list[Word] = []
        self.model_words: list[Word] = []
        self.user_text: list[TextEvent] = []
        self.background: list = []
        self.grading: list[GradingWindow] = []
        self.metadata: dict = {}
        # Per-episode voices: fixed order of draws keeps seeds reproducible.
        self.user_voice = USER_VOICE.jitter(self.rng)
        self.model_voice = MODEL_VOICE.jitter(self.rng)
        self.other_voice = OTHER_VOICE.jitter(self.rng)
        self.typed = bool(self.rng.random() < 0.5)  # drawn in every mode: the seed's other draws stay put
        if instruction_mode != "mixed":
            self.typed = instruction_mode == "typed"
        self.metadata["instruction_mode"] = "typed" if self.typed else "spoken"
        self.metadata["voices"] = {
            "user": self.user_voice.espeak_name, "model": self.model_voice.espeak_name,
            "other": self.other_voice.espeak_name,
        }  # fmt: skip

    # ---- speech ---------------------------------------------------------------------------
    def render(self, text: str, voice: VoiceSpec) -> RenderedSpeech:
        return self.renderer.render(text, voice)

    def user_says(self, text: str, start: float) -> list[Word]:
        """User speech at `start`; returns its words (episode time)."""
        words = place(self.user_track, self.render(text, self.user_voice), start, self.sr)
        self.user_words += words
        return words

    def other_says(self, text: str, start: float, gain: float = 1.0) -> list[Word]:
        """A third voice in the user channel (gain < 1 for background speech), also kept alone in `other_track`."""
        rendered = self.render(text, self.other_voice)
        words = place(self.user_track, rendered, start, self.sr, gain)
        place(self.other_track, rendered, start, self.sr, gain)
        self.other_words += words
        return words

    def model_says(self, text: str, start: float, stop_at: float | None = None) -> list[Word]:
        """Ground-truth model speech at `start`, optionally broken off at `stop_at` (a 10 ms fade).

        Words that start before the break are kept (the last clipped to it); later ones dropped.
        """
        rendered = self.render(text, self.model_voice)
        if stop_at is not None:
            n = max(0, int(round((stop_at - start) * self.sr)))
            audio = rendered.audio[:n].copy()
            fade = min(audio.size, int(0.01 * self.sr))
            if fade:
                audio[-fade:] *= np.linspace(1.0, 0.0, fade, dtype=np.float32)
            cut_words = tuple(
                Word(w.text, w.start, min(w.end, stop_at - start))
                for w in rendered.words
                if start + w.start < stop_at
            )
            rendered = RenderedSpeech(audio, cut_words, rendered.sample_rate)
        words = place(self.model_track, rendered, start, self.sr)
        self.model_words += words
        return words

    def instruct(self, text: str, start: float) -> float:
        """Gives an instruction typed or spoken (per the episode's mode); returns when it is understood."""
        if self.typed:
            self.user_text.append(TextEvent(text, start))
            return start + typed_read_s(text)
        self.user_says(text, start)
        return start + self.render(text, self.user_voice).speech_end

    def gap(self, lo: float, hi: float) -> float:
        """A seeded response gap, never below the latency floor."""
        return max(MIN_LATENCY_S, float(self.rng.uniform(lo, hi)))

    def window(self, kind: str, start: float, end: float, expected: str = "") -> None:
        self.grading.append(GradingWindow(kind, float(start), float(end), expected))

    # ---- finishing ----------------------------------------------------------------------------
    def _video(self) -> list[VideoFrame]:
        """1 frame/s: a coloured square drifting over a plain background (colours seeded)."""
        rng = self.rng
        bg = rng.integers(0, 256, 3).astype(np.uint8)
        fg = rng.integers(0, 256, 3).astype(np.uint8)
        side = int(rng.integers(24, 64))
        x, y = (int(v) for v in rng.integers(0, VIDEO_SIZE - side, 2))
        dx, dy = (int(v) for v in rng.integers(-12, 13, 2))
        frames = []
        for k in range(int(np.ceil(self.duration - 1e-9))):
            img = np.empty((VIDEO_SIZE, VIDEO_SIZE, 3), np.uint8)
            img[:] = bg
            cx = int(np.clip(x + k * dx, 0, VIDEO_SIZE - side))
            cy = int(np.clip(y + k * dy, 0, VIDEO_SIZE - side))
            img[cy : cy + side, cx : cx + side] = fg
            frames.append(VideoFrame(float(k), img))
        return frames

    def finish(self) -> Episode:
        """Adds noise (and maybe video), clips every event to [0, duration], builds the Episode."""
        d = self.duration
        video = self._video() if self.rng.random() < VIDEO_PROB else []
        noise = self.rng.normal(0.0, NOISE_STD, self.user_track.size).astype(np.float32)
        user_audio = np.clip(self.user_track + noise, -1.0, 1.0)
        model_audio = np.clip(self.model_track, -1.0, 1.0)
        grading = [
            w.__class__(w.kind, max(0.0, w.start), min(d, w.end), w.expected)
            for w in self.grading
            if w.start < d and w.end > w.start
        ]
        key = lambda w: (w.start, w.end)
        return Episode(
            episode_id=f"{self.task}-{self.seed}",
            duration=d,
            sample_rate=self.sr,
            user_audio=user_audio,
            model_audio=model_audio,
            user_words=sorted((w for w in self.user_words if w.start < d), key=key),
            model_words=sorted((w for w in self.model_words if w.start < d), key=key),
            other_words=sorted((w for w in self.other_words if w.start < d), key=key),
            user_text=[e for e in self.user_text if e.time <= d],
            video=video,
            background=sorted((e for e in self.background if e.time <= d), key=lambda e: e.time),
            grading=grading,
            task=self.task,
            metadata=dict(self.metadata),
            other_audio=self.other_track if np.any(self.other_track) else np.zeros(0, np.float32),
        )
