"""Shared test helpers: a small synthetic episode (no TTS), packing through streams/pack.py, and the
engine-vs-training-forward comparison."""

from __future__ import annotations

import dataclasses

import numpy as np

from interaction_jax.background.protocol import DelegationEvent
from interaction_jax.data.episode import BackgroundEvent, Episode, TextEvent, VideoFrame, Word
from interaction_jax.features.mel import FeatureParams
from interaction_jax.inference import sampling
from interaction_jax.inference.session import Chunk
from interaction_jax.streams.layout import Kind, StreamLayout
from interaction_jax.streams.pack import EpisodeGrid, pack_turn, pack_window
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
    grid = EpisodeGrid.from_episode(ep, layout, ByteTokenizer(), FeatureParams.from_config(config.features),
                                    user_speech_timing=str(config.model.get("user_speech_timing", "next_turn")))
    return layout, grid, pack_window(grid, 0, grid.num_turns)


def forced_inputs(engine, grid, turn: int, slot: int, inputs=None) -> dict:
    """Engine inputs with `slot` teacher-forced to micro-turn `turn` of the packed episode."""
    inputs = engine.empty_inputs() if inputs is None else inputs
    one = pack_turn(grid, turn)
    for k in ("token_ids", "dmel", "patches", "video_present"):
        inputs[k][slot] = one[k]
    inputs["active"][slot] = True
    inputs["forced"][slot] = True
    return inputs


def check_alignment(model, layout, grid, ref, outs, slot, atol, seed: int = 7) -> None:
    """The engine outputs `outs` (one per micro-turn of `slot`, a session reset with `seed`, debug
    outputs on) equal the training forward `ref` on the packed window at the model-output positions:
    text logits, flow conditioning states, and the mel frames the flow ODE draws from them."""
    n = grid.num_turns
    ti = layout.kind_indices(Kind.MODEL_TEXT, n).reshape(-1)
    ai = layout.kind_indices(Kind.MODEL_AUDIO, n).reshape(-1)
    logits = np.concatenate([o["text_logits"][slot] for o in outs])
    hidden = np.concatenate([o["audio_hidden"][slot] for o in outs])
    np.testing.assert_allclose(logits, ref["text_logits"][0][ti], atol=atol, rtol=0)
    np.testing.assert_allclose(hidden, ref["hidden"][0][ai], atol=atol, rtol=0)
    # flow outputs: the engine's mel frames == the flow ODE on the *reference* hidden with the same keys
    key = sampling.session_key_data(seed)[None]
    ref_h = ref["hidden"][0][ai].reshape(n, layout.audio_positions, -1)
    for t in (0, n - 1):
        tk = sampling.turn_keys(key, np.array([t], np.int32))
        for j in range(layout.audio_positions):
            k = sampling.position_keys(tk, sampling.AUDIO_KEY_OFFSET + j)[0]
            want = np.asarray(model.sample_mel(ref_h[t, j], k))
            np.testing.assert_allclose(outs[t]["mel"][slot, j], want, atol=10 * atol, rtol=0)


# frames in micro-turns 0, 1, 2, 4 and 6 (200 ms micro-turns): none arrives in micro-turn 3 or 5
FRAME_TIMES = (0.05, 0.3, 0.5, 0.9, 1.25)


def video_episode(duration: float = 1.4) -> Episode:
    """`episode(duration, seed=3)` with random 80x80 frames at FRAME_TIMES (the sparse-video tests')."""
    ep = episode(duration, seed=3)
    rng = np.random.default_rng(1)
    return dataclasses.replace(ep, video=[VideoFrame(t, rng.integers(0, 255, (80, 80, 3), dtype=np.uint8))
                                          for t in FRAME_TIMES])


def live_chunks(ep: Episode, layout: StreamLayout) -> list[Chunk]:
    """The episode cut into 200 ms chunks, each event in the micro-turn it arrives in."""
    S = int(layout.micro_turn_s * 16000)
    chunks = [Chunk(audio=ep.user_audio[t * S : (t + 1) * S]) for t in range(layout.num_turns(ep.duration))]
    for ev in ep.user_text:
        chunks[layout.input_turn(ev.time)].text = ev.text
    for ev in ep.background:
        chunks[layout.input_turn(ev.time)].background = [DelegationEvent("done", ev.job_id, "s", ev.time, ev.text)]
    for fr in sorted(ep.video, key=lambda f: f.time):
        chunks[layout.input_turn(fr.time)].video = fr.image
    return chunks
