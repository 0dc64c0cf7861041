"""`layout.video_delta`: every patch carries its frame's RGB and the change since the frame shown at
the previous video micro-turn. The delta is checked against a hand formula on the episode's own
frames; a live session shows what the packer shows (uniform and sparse video); a teacher-forced
replay through the engine equals the training forward on the delta-packed window."""


import jax
import numpy as np
import pytest
from conftest import config_path
from flax import nnx
from helpers import check_alignment, forced_inputs, grid_and_window, live_chunks, video_episode

from interaction_jax.config_lib import load_config
from interaction_jax.features.video import frame_to_patches, with_delta
from interaction_jax.inference.engine import StreamEngine
from interaction_jax.inference.session import Scheduler
from interaction_jax.model.interaction_model import InteractionModel
from interaction_jax.streams.pack import pack_turn

# (helpers.FRAME_TIMES) micro-turn 3 shows no frame, so micro-turn 4 has no change to show
_episode = video_episode


def _config(k=1, *more):
    return load_config(config_path("tiny.py"), ["layout.video_delta=True", f"layout.video_every={k}", *more])


def test_with_delta_by_hand():
    now = np.array([[200, 0, 128]], np.uint8)
    before = np.array([[40, 255, 127]], np.uint8)
    out = with_delta(now, before)
    np.testing.assert_array_equal(out[..., :3], now)
    np.testing.assert_array_equal(out[..., 3:], [[128 + 80, 128 - 128, 128 + 0]])  # (now - before) // 2 + 128
    np.testing.assert_array_equal(with_delta(now, None)[..., 3:], [[128, 128, 128]])  # no earlier frame
    with pytest.raises(ValueError, match="do not match"):
        with_delta(now, before[..., :2])


def test_packed_window_holds_each_frame_and_its_change_since_the_one_before():
    """Uniform video: micro-turn t's patch = RGB of its frame and (frame_t - frame_{t-1}) // 2 + 128,
    computed here from the episode's frames; after a micro-turn without a frame, zero change."""
    c = _config()
    layout, grid, win = grid_and_window(c, _episode())
    assert win["patches"].shape[-1] == 6 and layout.video_channels == 6
    raw = {layout.input_turn(f.time): frame_to_patches(f.image, layout.video_frame_size, layout.patch_size)
           for f in _episode().video}
    for t in range(grid.num_turns):
        if t not in raw:
            assert not win["video_present"][t] and not win["patches"][t].any()
            continue
        assert win["video_present"][t]
        np.testing.assert_array_equal(win["patches"][t, ..., :3], raw[t])
        if t - 1 in raw:
            want = ((raw[t].astype(int) - raw[t - 1].astype(int)) // 2 + 128).astype(np.uint8)
        else:
            want = np.full(raw[t].shape, 128, np.uint8)
        np.testing.assert_array_equal(win["patches"][t, ..., 3:], want, err_msg=f"t={t}")
    assert (win["patches"][1, ..., 3:] != 128).any()  # a real change is there to see


_chunks = live_chunks


@pytest.mark.parametrize("k", [1, 2])
def test_a_live_session_shows_the_deltas_the_packer_shows(k):
    c = _config(k)
    engine = StreamEngine(c, InteractionModel(c, rngs=nnx.Rngs(0)), slots=1)
    layout, grid, _ = grid_and_window(c, _episode())
    session = Scheduler(engine).open_session(seed=1)
    for t, chunk in enumerate(_chunks(_episode(), layout)):
        inputs = engine.empty_inputs()
        session.fill_inputs(inputs, chunk)
        want = pack_turn(grid, t)
        np.testing.assert_array_equal(inputs["patches"][session.slot], want["patches"], err_msg=f"t={t}")
        np.testing.assert_array_equal(inputs["video_present"][session.slot], want["video_present"])


def test_teacher_forced_replay_equals_the_forward_on_the_delta_window():
    c = _config(1, "inference.slots=1")
    model = InteractionModel(c, rngs=nnx.Rngs(0))
    engine = StreamEngine(c, model, debug_outputs=True)
    layout, grid, win = grid_and_window(c, _episode())
    ref = jax.tree.map(np.asarray, jax.jit(lambda b: model(b))({key: v[None] for key, v in win.items()}))
    engine.reset(0, seed=7)
    outs = [engine.step(forced_inputs(engine, grid, t, 0)) for t in range(grid.num_turns)]
    check_alignment(model, layout, grid, ref, outs, 0, atol=2e-5)
    # the delta channels matter: the same window with them zeroed changes the output
    flat = dict(win, patches=np.concatenate([win["patches"][..., :3], np.full_like(win["patches"][..., 3:], 128)],
                                            axis=-1))
    other = jax.tree.map(np.asarray, jax.jit(lambda b: model(b))({key: v[None] for key, v in flat.items()}))
    assert np.abs(other["text_logits"] - ref["text_logits"]).max() > 1e-4
