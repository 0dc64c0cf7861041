"""`layout.video_every = k`: a frame's patches every k micro-turns, the other micro-turns without
video positions. Checked against hand-computed indices, against the every-micro-turn packing with
the dropped positions removed, for causality of the frames shown, and through the model (the
streaming engine with such layouts: tests/inference/test_engine_video_every.py)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import config_path
from flax import nnx

from interaction_jax.config_lib import load_config
from interaction_jax.data.episode import Episode, TextEvent, VideoFrame, Word
from interaction_jax.data.pipeline import RandomWindow
from interaction_jax.model.interaction_model import InteractionModel, forward
from interaction_jax.streams.layout import Kind, StreamLayout
from interaction_jax.streams.pack import EpisodeGrid, pack_window
from interaction_jax.streams.tokenizer import ByteTokenizer

FULL = StreamLayout(video_patches=4, video_frame_size=80)  # P = 4 + 4 + 4 + 4 + 4 + 4 = 24
SPARSE = dataclasses.replace(FULL, video_every=2)


def _frame(value: int) -> np.ndarray:
    return np.full((80, 80, 3), value, np.uint8)


def _episode() -> Episode:
    rng = np.random.default_rng(0)
    n = int(1.2 * 16000)
    return Episode(
        episode_id="v", duration=1.2,
        user_audio=(0.1 * rng.standard_normal(n)).astype(np.float32),
        model_audio=(0.1 * rng.standard_normal(n)).astype(np.float32),
        model_words=[Word("hi", 0.45, 0.6)], user_text=[TextEvent("yo", 0.1)],
        # frames in micro-turns 0, 1 and 3 (200 ms micro-turns)
        video=[VideoFrame(0.05, _frame(10)), VideoFrame(0.3, _frame(20)), VideoFrame(0.7, _frame(30))],
    )  # fmt: skip


def test_positions_of_a_sparse_video_window_by_hand():
    assert FULL.positions_per_turn == 24 and SPARSE.uniform is False and FULL.uniform
    # 5 micro-turns, video in 0, 2, 4: 3 x 24 + 2 x 20
    assert SPARSE.seq_len(5) == 112 and SPARSE.video_turns(5) == 3
    np.testing.assert_array_equal(SPARSE.turn_offsets(5), [0, 24, 44, 68, 88, 112])
    np.testing.assert_array_equal(SPARSE.kind_indices(Kind.VIDEO, 5)[:, 0], [0, 44, 88])
    # USER_AUDIO is positions 12..15 of a full micro-turn, 8..11 of one without video
    np.testing.assert_array_equal(SPARSE.kind_indices(Kind.USER_AUDIO, 5)[:, 0], [12, 24 + 8, 44 + 12, 68 + 8, 88 + 12])
    kinds = SPARSE.window_kinds(5)
    for kind in Kind:
        assert np.all(kinds[SPARSE.kind_indices(kind, 5).reshape(-1)] == int(kind)), kind
    assert sum(SPARSE.kind_indices(k, 5).size for k in Kind) == 112
    with pytest.raises(ValueError, match="video_every"):
        StreamLayout(video_every=0)
    with pytest.raises(ValueError, match="block_of needs the same positions.*expected layout.video_every=1"):
        SPARSE.require_uniform("block_of")


def test_sparse_window_is_the_full_window_without_the_dropped_video_positions():
    grid = EpisodeGrid.from_episode(_episode(), SPARSE, ByteTokenizer())
    sparse = pack_window(grid, 0, 6)
    full = pack_window(dataclasses.replace(grid, layout=FULL), 0, 6)
    dropped = FULL.kind_indices(Kind.VIDEO, 6)[[1, 3, 5]].reshape(-1)
    keep = np.setdiff1d(np.arange(FULL.seq_len(6)), dropped)
    spec = SPARSE.packed_spec(6)
    for name, (shape, dtype) in spec.items():
        assert sparse[name].shape == shape and sparse[name].dtype == dtype, name
        if name not in ("patches", "video_present", "positions"):
            np.testing.assert_array_equal(sparse[name], full[name][keep], err_msg=name)
    np.testing.assert_array_equal(sparse["positions"], np.arange(SPARSE.seq_len(6)))
    # video micro-turn t shows the last frame of t-1..t: turn 0 the frame of 0.05 s, turn 2 the one of
    # 0.3 s (micro-turn 1), turn 4 the one of 0.7 s (micro-turn 3); never a frame from later
    np.testing.assert_array_equal(sparse["video_present"], [True, True, True])
    np.testing.assert_array_equal(sparse["patches"][:, 0, 0, 0, 0], [10, 20, 30])
    with pytest.raises(ValueError, match="multiple of 2"):
        pack_window(grid, 1, 4)


def test_random_windows_start_on_the_video_grid():
    ep = dataclasses.replace(_episode(), duration=1.2)
    grid = EpisodeGrid.from_episode(ep, dataclasses.replace(SPARSE, video_every=3), ByteTokenizer())
    rw = RandomWindow(num_turns=2)
    starts = {int(rw.random_map(grid, np.random.default_rng(s))["micro_turn"][0]) for s in range(40)}
    assert starts and all(s % 3 == 0 for s in starts) and starts <= {0, 3}


def test_the_model_trains_on_sparse_video_windows_and_stays_causal():
    c = load_config(config_path("tiny.py"), ["layout.video_every=2"])
    layout = StreamLayout.from_config(c)
    assert not layout.uniform
    ep = dataclasses.replace(_episode(), video=[VideoFrame(0.05, np.zeros((160, 160, 3), np.uint8)),
                                                VideoFrame(0.7, np.full((160, 160, 3), 200, np.uint8))])
    grid = EpisodeGrid.from_episode(ep, layout, ByteTokenizer())
    win = pack_window(grid, 0, 6)
    batch = {k: jnp.asarray(v[None]) for k, v in win.items()}
    model = InteractionModel(c, rngs=nnx.Rngs(0))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    loss, _ = forward(graphdef, params, batch, jax.random.key(0), rest)
    assert np.isfinite(float(loss))
    # the frame of 0.7 s is shown at micro-turn 4's video positions: nothing before them changes with it
    other = {**batch, "patches": batch["patches"].at[:, 2].set(7)}
    a, b = np.asarray(model(batch)["hidden"][0]), np.asarray(model(other)["hidden"][0])
    first = layout.kind_indices(Kind.VIDEO, 6)[2, 0]
    np.testing.assert_allclose(a[:first], b[:first], atol=1e-6)
    assert not np.allclose(a[first:], b[first:], atol=1e-4)
