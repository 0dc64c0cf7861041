"""Optimizer pieces against their definitions: schedule, decay mask, clipping, accumulation."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
from conftest import config_path

from interaction_jax.config_lib import load_config
from interaction_jax.train.optimizer import _decay_mask, learning_rate_schedule, make_optimizer


def tcfg(*overrides):
    return load_config(config_path("tiny.py"), list(overrides)).train


def test_schedule_is_linear_warmup_then_cosine_to_the_floor():
    c = tcfg("train.learning_rate=1.0", "train.warmup_steps=10", "train.num_steps=110", "train.min_lr_ratio=0.1")
    s = learning_rate_schedule(c)
    assert float(s(0)) == 0.0 and np.isclose(float(s(5)), 0.5) and np.isclose(float(s(10)), 1.0)
    mid = 0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * 0.5))  # halfway through the cosine
    assert np.isclose(float(s(60)), mid, atol=1e-6) and np.isclose(float(s(110)), 0.1, atol=1e-6)


def test_weight_decay_skips_vectors_norms_and_embeddings():
    params = {
        "backbone": {"w": jnp.ones((3, 3)), "norm": {"scale": jnp.ones((3, 3))}, "b": jnp.ones(3)},
        "embed": {"text": {"table": jnp.ones((5, 3))}, "kind": jnp.ones((6, 3)), "hmlp": {"proj": jnp.ones((4, 3))}},
    }
    mask = _decay_mask(params)
    assert mask["backbone"]["w"] and not mask["backbone"]["norm"]["scale"] and not mask["backbone"]["b"]
    assert not mask["embed"]["text"]["table"] and not mask["embed"]["kind"]
    assert mask["embed"]["hmlp"]["proj"]  # the hMLP is a layer, not a lookup table


def test_weight_decay_mask_on_the_model_paths(tiny_config):
    from flax import nnx

    from interaction_jax.model.interaction_model import InteractionModel

    _, params, _ = nnx.split(InteractionModel(tiny_config, rngs=nnx.Rngs(0)), nnx.Param, ...)  # as train/state.py
    leaves = jax.tree_util.tree_flatten_with_path(_decay_mask(params))[0]
    flat = {"/".join(str(getattr(k, "key", k)) for k in path): bool(v) for path, v in leaves}
    assert len(flat) == len(jax.tree.leaves(params))
    assert not any(v for k, v in flat.items() if k.endswith("table") or "norm" in k)
    assert any(v for k, v in flat.items() if "hmlp" in k) and any(v for k, v in flat.items() if "attn" in k)


def test_clipping_bounds_the_update_of_a_huge_gradient():
    c = tcfg("train.grad_clip_norm=1.0", "train.weight_decay=0.0", "train.warmup_steps=1")
    tx, _ = make_optimizer(c)
    p = {"w": jnp.zeros(4)}
    state = tx.init(p)
    g1 = {"w": jnp.full(4, 1e6)}
    u1, _ = tx.update(g1, state, p)
    g2 = {"w": jnp.full(4, 0.5)}  # already unit norm: clipping leaves it alone
    u2, _ = tx.update(g2, state, p)
    np.testing.assert_allclose(u1["w"], u2["w"], rtol=1e-6)  # Adam of the clipped gradient


def test_gradient_accumulation_applies_the_mean_every_k_steps():
    c = tcfg("train.grad_accum_steps=2", "train.weight_decay=0.0", "train.grad_clip_norm=0.0")
    tx, _ = make_optimizer(c)
    ref_c = tcfg("train.weight_decay=0.0", "train.grad_clip_norm=0.0")
    ref, _ = make_optimizer(ref_c)
    p = {"w": jnp.arange(3.0)}
    s, rs = tx.init(p), ref.init(p)
    g1, g2 = {"w": jnp.array([1.0, -2.0, 3.0])}, {"w": jnp.array([3.0, 0.0, -1.0])}
    u1, s = tx.update(g1, s, p)
    assert not jnp.any(u1["w"])  # nothing applied on the first micro-step
    u2, s = tx.update(g2, s, p)
    mean = jax.tree.map(lambda a, b: (a + b) / 2, g1, g2)
    expected, _ = ref.update(mean, rs, p)
    np.testing.assert_allclose(u2["w"], expected["w"], rtol=1e-6)
    assert isinstance(tx, optax.GradientTransformation)
