"""Shared test helpers: a small synthetic episode (no TTS) and packing through streams/pack.py."""

from __future__ import annotations

import numpy as np

from interaction_jax.data.episode import BackgroundEvent, Episode, TextEvent, VideoFrame, Word
from interaction_jax.features.mel import FeatureParams
from interaction_jax.streams.layout import StreamLayout
from interaction_jax.streams.pack import EpisodeGrid, pack_window
from interaction_jax.streams.tokenizer import ByteTokenizer


def episode(duration: float = 1.0, seed: int = 0, frame_size: int = 80) -> Episode:
    """Noise-like audio on both channels, a few model words, typed text, a background result, video."""
    rng = np.random.default_rng(seed)
    n = int(round(duration * 16000))
    t = np.arange(n) / 16000.0
    user = 0.2 * np.sin(2 * np.pi * (200 + 300 * rng.random()) * t) * (rng.random(n) > 0.3)
    model = 0.1 * rng.standard_normal(n)
    return Episode(
        episode_id=f"test{seed}",
        duration=duration,
        user_audio=user.astype(np.float32),
        model_audio=model.astype(np.float32),
        model_words=[Word("hi", 0.25, 0.4), Word("there", 0.45, 0.6)],
        user_text=[TextEvent("yo", 0.1)],
        background=[BackgroundEvent("result", 0.3, "42", 1)],
        video=[VideoFrame(0.05, rng.integers(0, 255, (frame_size, frame_size, 3), dtype=np.uint8)),
               VideoFrame(0.5, rng.integers(0, 255, (frame_size, frame_size, 3), dtype=np.uint8))],
    )


def grid_and_window(config, ep: Episode):
    layout = StreamLayout.from_config(config)
    grid = EpisodeGrid.from_episode(ep, layout, ByteTokenizer(), FeatureParams.from_config(config.features))
    return layout, grid, pack_window(grid, 0, grid.num_turns)


def forced_inputs(engine, grid, turn: int, slot: int, inputs=None) -> dict:
    """Engine inputs with `slot` teacher-forced to micro-turn `turn` of the packed episode."""
    inputs = engine.empty_inputs() if inputs is None else inputs
    one = pack_window(grid, turn, 1)
    for k in ("token_ids", "dmel", "patches", "video_present"):
        inputs[k][slot] = one[k]
    inputs["active"][slot] = True
    inputs["forced"][slot] = True
    return inputs
