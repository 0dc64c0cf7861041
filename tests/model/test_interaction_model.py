"""InteractionModel on the tiny config: streaming step == full forward, causality, gradients."""

import jax
import numpy as np
import pytest
from conftest import config_path
from flax import nnx

from interaction_jax.config_lib import load_config
from interaction_jax.model.interaction_model import InteractionModel, block_of, dummy_batch, forward
from interaction_jax.streams.layout import StreamLayout

W = 3  # micro-turns per test window


@pytest.fixture(scope="module")
def tiny():
    c = load_config(config_path("tiny.py"))
    model = InteractionModel(c, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model)
    full = jax.jit(lambda s, b: nnx.merge(graphdef, s)(b))
    # Test-side data stays numpy: every eager jnp op on a new shape would compile on CPU.
    batch = {k: np.asarray(v) for k, v in dummy_batch(c, 2, W, seed=0).items()}
    batch["video_present"] = np.array([[True, False, True], [False, True, True]])
    return c, StreamLayout.from_config(c), model, graphdef, state, full, batch


def test_step_by_step_equals_full_forward(tiny):
    """Prefill each micro-turn's input block, then decode its output block one position at a time."""
    c, layout, model, graphdef, state, full, batch = tiny
    ref = full(state, batch)
    step = jax.jit(lambda s, blk, cache: nnx.merge(graphdef, s).step(blk, cache))
    cache = model.init_cache(2, layout.seq_len(W) + 8)
    hidden, logits = [], []
    p, n_in = layout.positions_per_turn, layout.input_size
    for t in range(W):
        spans = [(t * p, t * p + n_in)] + [(i, i + 1) for i in range(t * p + n_in, (t + 1) * p)]
        for a, z in spans:
            out, cache = step(state, block_of(batch, a, z, layout), cache)
            hidden.append(out["hidden"])
            logits.append(out["text_logits"])
    np.testing.assert_array_equal(cache.lengths, [layout.seq_len(W)] * 2)
    np.testing.assert_allclose(np.concatenate(hidden, 1), ref["hidden"], atol=1e-5)
    np.testing.assert_allclose(np.concatenate(logits, 1), ref["text_logits"], atol=1e-5)


def _perturb_from(batch, layout, start):
    """Changes every input at positions >= start (and the video of micro-turns starting there)."""
    b = {k: v.copy() for k, v in batch.items()}
    rs = np.random.RandomState(1)
    b["token_ids"][:, start:] = rs.randint(0, 272, b["token_ids"][:, start:].shape)
    b["dmel"][:, start:] = 15 - b["dmel"][:, start:]
    first_turn = -(-start // layout.positions_per_turn)
    b["patches"][:, first_turn:] = 255 - b["patches"][:, first_turn:]
    b["video_present"][:, first_turn:] = ~b["video_present"][:, first_turn:]
    return b


def test_causality(tiny):
    c, layout, model, graphdef, state, full, batch = tiny
    ref = jax.tree.map(np.asarray, full(state, batch))
    p = layout.positions_per_turn
    for start in (p + 5, 2 * p):  # mid-turn, and the first input of micro-turn 2
        out = full(state, _perturb_from(batch, layout, start))
        for key in ("hidden", "text_logits"):
            np.testing.assert_allclose(out[key][:, :start], ref[key][:, :start], atol=1e-6)
            assert np.max(np.abs(np.asarray(out[key])[:, start:] - ref[key][:, start:])) > 1e-4


def test_output_block_sees_its_own_micro_turn_only(tiny):
    """The output block of turn t is unchanged by input after turn t but changes with turn t's input."""
    c, layout, model, graphdef, state, full, batch = tiny
    ref = jax.tree.map(np.asarray, full(state, batch))
    p, n_in, t = layout.positions_per_turn, layout.input_size, 1
    out_block = slice(t * p + n_in, (t + 1) * p)
    later = full(state, _perturb_from(batch, layout, (t + 1) * p))
    np.testing.assert_allclose(np.asarray(later["hidden"])[:, out_block], ref["hidden"][:, out_block], atol=1e-6)
    own = {k: v.copy() for k, v in batch.items()}
    own["dmel"][:, t * p : t * p + n_in] = 15 - own["dmel"][:, t * p : t * p + n_in]
    changed = np.asarray(full(state, own)["hidden"])
    assert np.max(np.abs(changed[:, out_block] - ref["hidden"][:, out_block])) > 1e-4


def _loss_metrics_grads(graphdef, params, rest, batch):
    """One compile: loss, metrics and parameter gradients of the training forward."""

    def loss_fn(p):
        return forward(graphdef, p, batch, jax.random.key(0), rest)

    (loss, metrics), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(params)
    missing = [
        "/".join(map(str, path)) for path, g in nnx.to_flat_state(grads) if not np.abs(np.asarray(g[...])).max() > 0
    ]
    assert not missing, f"no gradient reaches: {missing}"
    assert np.isfinite(float(loss))
    return loss, metrics


def test_forward_loss_and_gradients_dense(tiny):
    c, layout, model, graphdef, state, full, batch = tiny
    g, params, rest = nnx.split(model, nnx.Param, ...)
    loss, metrics = _loss_metrics_grads(g, params, rest, batch)
    assert float(metrics["text_loss"]) == pytest.approx(np.log(272), rel=0.3)
    assert float(metrics["audio_loss"]) > 0


def test_gradients_moe():
    c = load_config(config_path("tiny.py"), ["model.layer_pattern=dense,moe", "model.moe.shared_expert=True"])
    model = InteractionModel(c, rngs=nnx.Rngs(0))
    batch = {k: np.asarray(v) for k, v in dummy_batch(c, 2, 2, seed=0).items()}
    batch["video_present"] = np.array([[True, False], [False, True]])
    g, params, rest = nnx.split(model, nnx.Param, ...)
    loss, metrics = _loss_metrics_grads(g, params, rest, batch)
    assert float(metrics["load_balance_loss"]) > 0
    assert int(np.sum(metrics["expert_counts"])) == 2 * batch["kinds"].size  # top_k=2 slots per token
