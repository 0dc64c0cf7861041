"""Backbone: layer patterns, scan == unrolled == remat (outputs and gradients), logical axes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import config_path
from flax import nnx

from interaction_jax.config_lib import load_config
from interaction_jax.model.transformer import Transformer, parse_pattern
from interaction_jax.parallel.rules import logical_to_spec


def _cfg(*extra):
    # The tiny dims themselves: parameter-init compiles are then shared with the model tests.
    return load_config(config_path("tiny.py"), list(extra)).model


def test_parse_pattern():
    assert parse_pattern("dense", 3) == ("dense",)
    assert parse_pattern("dense, moe", 4) == ("dense", "moe")
    with pytest.raises(ValueError, match="multiple"):
        parse_pattern("dense,moe", 3)
    with pytest.raises(ValueError, match="entries"):
        parse_pattern("dense,mlp", 2)


def test_params_are_stacked_with_logical_axes():
    model = nnx.eval_shape(lambda: Transformer(_cfg("model.num_layers=3"), rngs=nnx.Rngs(0)))
    state = nnx.state(model, nnx.Param)
    wq = state["groups"]["blocks"][0]["attn"]["wq"]
    assert wq.value.shape == (3, 64, 4, 16)
    assert wq.get_metadata()["out_sharding"] == ("layers", "embed", "heads", "head_dim")
    for _, var in nnx.to_flat_state(state):
        names = var.get_metadata()["out_sharding"]
        assert len(names) == var.value.ndim
        logical_to_spec(names)  # every name is in the rules table


def _loss_and_grads(cfg, x, pos):
    g, p = nnx.split(Transformer(cfg, rngs=nnx.Rngs(0)))

    def loss(p):
        h, _ = nnx.merge(g, p)(x, pos)
        return jnp.sum(h**2), h

    (_, h), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(p)
    return h, grads


def test_scan_unrolled_and_remat_agree():
    """remat only changes the backward pass, scan_layers only the forward: compare each."""
    rs = np.random.RandomState(0)
    x = rs.randn(2, 6, 64).astype(np.float32)
    pos = np.broadcast_to(np.arange(6), (2, 6))
    h0, g0 = _loss_and_grads(_cfg("model.num_layers=2"), x, pos)
    assert all(float(np.linalg.norm(np.asarray(v))) > 0 for v in jax.tree.leaves(g0))
    h, g = _loss_and_grads(_cfg("model.num_layers=2", "model.remat=dots"), x, pos)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4), g, g0)
    unrolled = Transformer(_cfg("model.num_layers=2", "model.scan_layers=False"), rngs=nnx.Rngs(0))
    h_unrolled, _ = nnx.jit(lambda m, x, pos: m(x, pos))(unrolled, x, pos)
    np.testing.assert_allclose(h_unrolled, h0, atol=1e-5)


def test_bad_remat_is_rejected():
    with pytest.raises(ValueError, match="remat"):
        nnx.eval_shape(lambda: Transformer(_cfg("model.remat=some"), rngs=nnx.Rngs(0)))
