"""The streaming engine with sparse video (`layout.video_every = k > 1`): a teacher-forced replay
equals the training forward on the sparse-packed window, also with sessions at other phases of k
in the same batch; sessions at different phases leave each other bitwise unchanged; a live session
shows the frame the packer shows; the combinations still refused fail with one clear line."""


import jax
import numpy as np
import pytest
from conftest import config_path
from flax import nnx
from helpers import check_alignment, forced_inputs, grid_and_window, live_chunks, video_episode

from interaction_jax.config_lib import ConfigError, load_config
from interaction_jax.inference.engine import StreamEngine
from interaction_jax.inference.session import Scheduler
from interaction_jax.model.interaction_model import InteractionModel, block_of
from interaction_jax.streams.layout import Kind
from interaction_jax.streams.pack import pack_turn, pack_window

# with k = 3, micro-turn 3 shows the frame of micro-turn 2 (none arrived in 3 itself), micro-turn 6 its own
_episode = video_episode


def _setup(k, overrides=(), slots=3, duration=1.4):
    c = load_config(config_path("tiny.py"), [f"layout.video_every={k}", f"inference.slots={slots}", *overrides])
    model = InteractionModel(c, rngs=nnx.Rngs(0))
    engine = StreamEngine(c, model, debug_outputs=True)
    layout, grid, win = grid_and_window(c, _episode(duration))
    assert not layout.uniform and win["kinds"].shape == (layout.seq_len(grid.num_turns),)
    ref = jax.jit(lambda b: model(b))({key: v[None] for key, v in win.items()})
    return c, model, engine, layout, grid, jax.tree.map(np.asarray, ref)


@pytest.fixture(scope="module")
def sparse2():
    return _setup(2)


def _replay_joined(engine, grid, joins: dict[int, int]) -> dict[int, list]:
    """Teacher-forces every slot in `joins` through the episode, slot s starting at tick joins[s]
    (so at its own phase of k); {slot: its outputs, one per micro-turn}."""
    outs = {s: [] for s in joins}
    for tick in range(grid.num_turns + max(joins.values())):
        inputs = engine.empty_inputs()
        for s, join in joins.items():
            if tick == join:
                engine.reset(s, seed=7)
            if join <= tick < join + grid.num_turns:
                forced_inputs(engine, grid, tick - join, s, inputs)
        out = engine.step(inputs)
        for s, join in joins.items():
            if join <= tick < join + grid.num_turns:
                outs[s].append(out)
    return outs


@pytest.mark.parametrize("k", [2, 3])
def test_teacher_forced_replay_equals_the_sparse_forward_at_every_phase(k, sparse2):
    """Three sessions replay the episode, joined at ticks 0, 1 and 2 (phases 0, 1, 2 of the engine's
    ticks): each one's outputs equal the training forward on the sparse-packed window."""
    c, model, engine, layout, grid, ref = sparse2 if k == 2 else _setup(k)
    outs = _replay_joined(engine, grid, {0: 0, 1: 1, 2: 2})
    for slot, slot_outs in outs.items():
        check_alignment(model, layout, grid, ref, slot_outs, slot, atol=2e-5)
    # each session's cache holds exactly the sparse sequence; one executable served every tick
    np.testing.assert_array_equal(np.asarray(engine.state.length), [layout.seq_len(grid.num_turns)] * 3)
    assert engine.compilations() == 1


@pytest.mark.parametrize("overrides, duration", [
    (["model.sliding_window=40", "model.attention_sinks=6", "inference.context_policy=sliding"], 1.6),
    (["inference.context_policy=hard", "inference.max_session_seconds=1.4"], 1.4),
])
def test_sparse_replay_with_a_sliding_ring_and_with_a_hard_limit(overrides, duration):
    """The ring wraps over the sparse positions and still equals the windowed forward; the hard
    policy sizes the cache to the sparse sequence (not max_turns x the full micro-turn)."""
    c, model, engine, layout, grid, ref = _setup(2, overrides, slots=2, duration=duration)
    if engine.policy.kind == "hard":
        assert engine.policy.rows == layout.seq_len(grid.num_turns) + engine.policy.scratch
    else:
        assert engine.policy.sinks + engine.policy.ring < layout.seq_len(grid.num_turns) / 2
    outs = _replay_joined(engine, grid, {0: 1, 1: 0})
    for slot in (0, 1):
        check_alignment(model, layout, grid, ref, outs[slot], slot, atol=2e-5)


def test_sessions_at_different_phases_do_not_see_each_other_bitwise(sparse2):
    """Free-running sessions: each one's outputs are bitwise those of a solo run, with the others
    joining at other phases of k and sending frames in their micro-turns without video."""
    c, model, engine, layout, grid, ref = sparse2

    def run(slots_joins: dict[int, int], ticks=6):
        res = {s: [] for s in slots_joins}
        for t in range(ticks):
            inputs = engine.empty_inputs()
            for s, join in slots_joins.items():
                if t == join:
                    engine.reset(s, seed=30 + s)
                if t >= join:
                    rs = np.random.RandomState(100 * s + t - join)  # the session's own input, by its turn
                    inputs["active"][s] = True
                    inputs["dmel"][s] = rs.randint(0, 16, inputs["dmel"][s].shape)
                    inputs["token_ids"][s, layout.block_slice(Kind.USER_TEXT)] = rs.randint(20, 200, 4)
                    inputs["patches"][s] = rs.randint(0, 256, inputs["patches"][s].shape)
                    inputs["video_present"][s] = True
            out = engine.step(inputs)
            for s, join in slots_joins.items():
                if t >= join:
                    res[s].append({key: v[s] for key, v in out.items()})
        return res

    crowded = run({0: 0, 1: 1, 2: 2})
    for s, join in ((0, 0), (1, 1), (2, 2)):
        solo = run({s: 0}, ticks=6 - join)[s]
        assert len(solo) == len(crowded[s])
        for a, b in zip(solo, crowded[s], strict=True):
            for key in a:
                np.testing.assert_array_equal(a[key], b[key], err_msg=f"slot {s} {key}")


_chunks = live_chunks


@pytest.mark.parametrize("k", [2, 3])
def test_a_session_shows_the_frame_the_packer_shows(k):
    """Live chunks (a frame in the micro-turn it arrives in) give the row `pack_turn` gives, whose
    video micro-turns hold the sparse window's frames; a session that joins later counts its own
    micro-turns (its first one shows video while the other session's does not)."""
    c = load_config(config_path("tiny.py"), [f"layout.video_every={k}"])
    engine = StreamEngine(c, InteractionModel(c, rngs=nnx.Rngs(0)), slots=2)
    layout, grid, win = grid_and_window(c, _episode())
    sched = Scheduler(engine)
    a = sched.open_session(seed=1)
    n_in, chunks = layout.input_size, _chunks(_episode(), layout)
    for t, chunk in enumerate(chunks):
        inputs = engine.empty_inputs()
        a.fill_inputs(inputs, chunk)
        want = pack_turn(grid, t)
        np.testing.assert_array_equal(inputs["token_ids"][a.slot, :n_in], want["token_ids"][:n_in], err_msg=f"t={t}")
        np.testing.assert_array_equal(inputs["dmel"][a.slot, :n_in], want["dmel"][:n_in], err_msg=f"t={t}")
        np.testing.assert_array_equal(inputs["patches"][a.slot], want["patches"], err_msg=f"t={t}")
        np.testing.assert_array_equal(inputs["video_present"][a.slot], want["video_present"], err_msg=f"t={t}")
        if t % k == 0:  # the independent reference: the sparse training window
            np.testing.assert_array_equal(want["patches"][0], win["patches"][t // k])
            assert want["video_present"][0] == win["video_present"][t // k]
        else:
            assert not want["video_present"][0] and not want["patches"].any()
    assert win["video_present"].all()  # every video micro-turn of this episode has a frame to show
    b = sched.open_session(seed=2)  # joins at a's micro-turn len(chunks): b's micro-turn 0
    inputs = engine.empty_inputs()
    b.fill_inputs(inputs, chunks[0])
    a.fill_inputs(inputs, chunks[0])
    assert inputs["video_present"][b.slot, 0] and (len(chunks) % k == 0) == inputs["video_present"][a.slot, 0]


def test_the_combinations_still_refused_are_one_clear_line():
    """What sparse video does not support (training with the fed-back transcript, `block_of` on a
    window) fails with one line naming the option and what was expected."""
    with pytest.raises(ConfigError, match="video_every") as e:
        load_config(config_path("tiny.py"), ["layout.video_every=2", "model.user_speech_feedback=True",
                                             "model.user_speech_loss_weight=1.0"])
    assert "\n" not in str(e.value)
    c = load_config(config_path("tiny.py"), ["layout.video_every=2"])
    layout, grid, win = grid_and_window(c, _episode())
    with pytest.raises(ValueError, match="expected layout.video_every=1") as e:
        block_of({key: v[None] for key, v in win.items()}, 0, 8, layout)
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="multiple of 2"):
        pack_window(grid, 1, 1)  # a training window starts on the video grid; `pack_turn` is per micro-turn
