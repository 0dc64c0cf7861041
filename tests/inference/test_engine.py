"""Streaming engine vs the teacher-forced training forward (independent reference), compile count,
slot independence, and the ring-buffer context policy against windowed training attention."""

import jax
import numpy as np
import pytest
from conftest import config_path
from flax import nnx
from helpers import check_alignment, episode, forced_inputs, grid_and_window

from interaction_jax.config_lib import load_config
from interaction_jax.inference.engine import StreamEngine, segments
from interaction_jax.model.interaction_model import InteractionModel
from interaction_jax.model.moe import MoEFeedForward
from interaction_jax.streams.layout import Kind


def _setup(overrides, slots=3, duration=1.0):
    c = load_config(config_path("tiny.py"), overrides + [f"inference.slots={slots}"])
    model = InteractionModel(c, rngs=nnx.Rngs(0))
    engine = StreamEngine(c, model, debug_outputs=True)
    layout, grid, win = grid_and_window(c, episode(duration))
    ref = jax.jit(lambda b: model(b))({k: v[None] for k, v in win.items()})
    return c, model, engine, layout, grid, jax.tree.map(np.asarray, ref)


@pytest.fixture(scope="module")
def dense():
    return _setup([])


def _replay(engine, grid, slot, others=()):
    """Teacher-forces `slot` through the episode while `others` slots free-run their own sessions."""
    engine.reset(slot, seed=7)
    for o in others:
        engine.reset(o, seed=100 + o)
    outs = []
    for t in range(grid.num_turns):
        inputs = forced_inputs(engine, grid, t, slot)
        for o in others:  # other sessions: random user audio, sampled outputs
            inputs["dmel"][o] = np.random.RandomState(t + o).randint(0, 16, inputs["dmel"][o].shape)
            inputs["active"][o] = True
        outs.append(engine.step(inputs))
    return outs


def _check_alignment(model, engine, layout, grid, ref, outs, slot, atol):
    check_alignment(model, layout, grid, ref, outs, slot, atol)


def test_segments_follow_the_layout(dense):
    c, model, engine, layout, grid, ref = dense
    segs = segments(layout)
    assert segs[0] == (0, layout.input_size + 1)  # input block + the first text slot (input known)
    assert segs[-1][1] == layout.positions_per_turn
    assert len(segs) == layout.model_text_slots + layout.audio_positions - 1


def test_teacher_forced_equals_forward_dense(dense):
    c, model, engine, layout, grid, ref = dense
    outs = _replay(engine, grid, slot=1, others=(0, 2))
    _check_alignment(model, engine, layout, grid, ref, outs, 1, atol=2e-5)


@pytest.mark.parametrize("decode_attention", ["live_flat", "live_window"])
def test_hard_policy_engine_equals_forward(decode_attention):
    """Under the "hard" policy, with another session running and a third slot idle (its rows never
    read): "live_flat" (the default: a split cache, one buffer per layer; the one-position calls
    read their layer's rows whole before the write, beside their own K/V) and "live_window" (the
    stacked cache, live chunks after the write) both replay the training forward."""
    c, model, engine, layout, grid, ref = _setup([f"inference.decode_attention={decode_attention}",
                                                  "inference.context_policy=hard"], slots=3)
    split = decode_attention == "live_flat"
    assert isinstance(engine.state.k, tuple) == split
    if split:
        assert len(engine.state.k) == c.model.num_layers and engine.state.k[0].shape[0] == 3
    outs = _replay(engine, grid, slot=2, others=(0,))
    _check_alignment(model, engine, layout, grid, ref, outs, 2, atol=2e-5)


def test_heard_tokens_are_the_forward_text_head_at_user_audio(dense):
    """The engine's `heard_tokens` (what the model writes at the user's audio) are the training
    forward's argmax text logits at the USER_AUDIO positions of the same episode."""
    c, model, engine, layout, grid, ref = dense
    outs = _replay(engine, grid, slot=1, others=(0,))
    ui = layout.kind_indices(Kind.USER_AUDIO, grid.num_turns)
    logits = ref["text_logits"][0][ui]  # [turns, audio positions, vocab]
    got = np.stack([o["heard_tokens"][1] for o in outs])
    assert got.shape == logits.shape[:2] and got.dtype == np.int32
    want = logits.argmax(-1)
    # equal, except where two logits tie within float tolerance
    top = np.take_along_axis(logits, got[..., None], -1)[..., 0]
    assert np.all((got == want) | (logits.max(-1) - top < 1e-4)), (got, want)
    assert (got == want).mean() > 0.9


def test_compiles_once_over_50_micro_turns(dense):
    c, model, engine, layout, grid, ref = dense
    seen = []
    jax.monitoring.register_event_duration_secs_listener(
        lambda name, *a, **k: seen.append(name) if "backend_compile" in name else None
    )
    rs = np.random.RandomState(0)
    for t in range(50):
        if t % 17 == 0:
            engine.reset(t % 3, seed=t)
        inputs = engine.empty_inputs()
        inputs["active"][:] = rs.rand(3) < 0.7
        inputs["forced"][:] = rs.rand(3) < 0.3
        inputs["dmel"][:] = rs.randint(0, 16, inputs["dmel"].shape)
        engine.step(inputs)
    assert engine.compilations() == 1
    assert seen == [], f"recompiled during streaming: {seen}"


def test_sessions_do_not_see_each_other_bitwise(dense):
    """A free-running session's outputs are bitwise the same alone and with others joining/leaving."""
    c, model, engine, layout, grid, ref = dense

    def run(schedule):
        engine.reset(0, seed=3)
        res = []
        for t in range(5):
            inputs = engine.empty_inputs()
            inputs["active"][0] = True
            inputs["dmel"][0] = np.random.RandomState(t).randint(0, 16, inputs["dmel"][0].shape)
            for slot, (join, leave) in schedule.items():
                if t == join:
                    engine.reset(slot, seed=50 + slot)
                if join <= t < leave:
                    inputs["active"][slot] = True
                    inputs["dmel"][slot] = 15 - inputs["dmel"][0]
                    inputs["token_ids"][slot] = 20 + t
            out = engine.step(inputs)
            res.append({k: v[0] for k, v in out.items()})
        return res

    alone = run({})
    crowded = run({1: (1, 3), 2: (2, 5)})
    for a, b in zip(alone, crowded):
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.mark.parametrize("moe_impl", ["auto", "model"])
def test_moe_teacher_forced_equals_forward(moe_impl):
    """The engine serves MoE layers with its own backend ("auto": the routed experts gathered for
    the 1-position decode calls, all experts densely for the prefill block) or the model's, and
    either way replays the training forward; the caller's model keeps its backend."""
    c, model, engine, layout, grid, ref = _setup(
        ["model.layer_pattern=dense,moe", "model.moe.impl=gather", f"inference.moe_impl={moe_impl}"], slots=2)
    def impls(m):
        return {x.impl for _, x in nnx.iter_modules(m) if isinstance(x, MoEFeedForward)}

    served = nnx.merge(engine.graphdef, *nnx.split(model, nnx.Param, ...)[1:])
    assert impls(served) == {"gather" if moe_impl == "model" else moe_impl} and impls(model) == {"gather"}
    outs = _replay(engine, grid, slot=0, others=(1,))
    _check_alignment(model, engine, layout, grid, ref, outs, 0, atol=2e-5)


@pytest.mark.parametrize("decode_attention", ["live_window", "live_window_batched", "live_flat", "pallas_interpret"])
def test_sliding_ring_buffer_equals_windowed_forward(decode_attention):
    """A model with a trained sliding window + sinks: the ring cache wraps several times and the
    engine still equals the windowed training forward — with the pure-JAX live-window attention
    and with the split-K Pallas decode kernel (interpret mode) reading the ring by its row map."""
    c, model, engine, layout, grid, ref = _setup(
        ["model.sliding_window=40", "model.attention_sinks=6", "inference.context_policy=sliding",
         f"inference.decode_attention={decode_attention}"], slots=2, duration=1.6)
    assert engine.policy.sinks + engine.policy.ring < grid.num_turns * layout.positions_per_turn / 2
    outs = _replay(engine, grid, slot=1, others=(0,))
    _check_alignment(model, engine, layout, grid, ref, outs, 1, atol=2e-5)


@pytest.mark.parametrize("key, value", [("decode_attention", "flash"), ("layer_loop", "vmap"), ("moe_impl", "sparse"),
                                        ("self_audio", "loud")])
def test_unknown_engine_option_is_a_clear_error(tiny_config, key, value):
    c = tiny_config.copy_and_resolve_references()
    c.inference[key] = value
    with pytest.raises(ValueError, match=f"inference.{key}='{value}'"):
        StreamEngine(c, slots=1)


def test_scan_layer_loop_equals_forward():
    """`inference.layer_loop=scan` (stacked weights, scanned) replays the training forward too
    (the default, "unrolled" per-layer weights, is what every other test here runs)."""
    c, model, engine, layout, grid, ref = _setup(["inference.layer_loop=scan"], slots=1)
    assert engine.params.groups == ()
    outs = _replay(engine, grid, slot=0)
    _check_alignment(model, engine, layout, grid, ref, outs, 0, atol=2e-5)
