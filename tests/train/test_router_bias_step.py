"""The sigmoid router's aux-loss-free bias update runs in the train step, per layer.

Reference: DeepSeek-V3's rule b_e += gamma * sign(mean_e(c) - c_e) written out in numpy on the
per-layer routed counts of the same batch, computed by an independent forward of the
pre-step model."""

import jax
import numpy as np
from conftest import config_path
from flax import nnx

from interaction_jax.config_lib import load_config
from interaction_jax.model.interaction_model import dummy_batch, forward, loss_weights
from interaction_jax.parallel import make_mesh
from interaction_jax.train.state import create_train_state
from interaction_jax.train.step import make_train_step, to_global_batch

RATE = 0.01


def _biases(graphdef, params, rest) -> np.ndarray:
    model = nnx.merge(graphdef, params, rest)
    blocks = model.backbone.groups.blocks
    return np.stack([np.asarray(blocks[i].ffn.router_bias.value) for i in (1, 2)], axis=1)  # [G, 2, E]


def test_sigmoid_router_bias_moves_against_each_layers_own_load():
    cfg = load_config(config_path("tiny.py"), [
        "model.layer_pattern=dense,moe,moe", "model.num_layers=6", "model.moe.router=sigmoid",
        f"model.moe.router_bias_rate={RATE}", "model.moe.impl=gather", "train.warmup_steps=1"])
    setup, state = create_train_state(cfg, make_mesh({"data": 1}, devices=jax.devices()[:1]))
    host = {k: np.asarray(v) for k, v in dummy_batch(cfg, 2, 2).items()}
    batch = to_global_batch(host, setup)
    rest0 = jax.device_get(state["rest"])
    b0 = _biases(setup.graphdef, state["params"], rest0)
    assert b0.shape[:2] == (2, 2) and not b0.any()  # 2 groups x 2 MoE blocks, zero-initialised

    # independent forward of the pre-step model on the same batch: per-layer routed counts
    _, m = forward(setup.graphdef, state["params"], batch, jax.random.key(0), state["rest"],
                   weights=loss_weights(cfg))
    counts = np.asarray(m["expert_counts_per_layer"], np.float64)  # [G, 2, E]
    tokens = host["valid"].sum()
    np.testing.assert_array_equal(counts.sum(-1), np.full((2, 2), tokens * cfg.model.moe.top_k))
    want = b0 + RATE * np.sign(counts.mean(-1, keepdims=True) - counts)

    step = make_train_step(cfg, setup)
    state, metrics = step(state, batch)
    assert "expert_counts_per_layer" not in metrics  # consumed by the step, not sent to the host
    got = _biases(setup.graphdef, state["params"], jax.device_get(state["rest"]))
    np.testing.assert_allclose(got, want, atol=1e-7)
    assert np.abs(got).max() == RATE
    assert not np.array_equal(got[:, 0], got[:, 1])  # layers differ: each balanced on its own counts
    np.testing.assert_allclose(np.asarray(metrics["expert_counts"]), counts.sum((0, 1)))
    assert float(metrics["moe/dropped_fraction"]) == 0.0


def test_softmax_router_step_leaves_rest_alone():
    cfg = load_config(config_path("tiny.py"), ["model.layer_pattern=moe", "model.num_layers=2",
                                               "model.moe.impl=gather"])
    setup, state = create_train_state(cfg, make_mesh({"data": 1}, devices=jax.devices()[:1]))
    before = jax.device_get(state["rest"])
    batch = to_global_batch({k: np.asarray(v) for k, v in dummy_batch(cfg, 2, 2).items()}, setup)
    state, metrics = make_train_step(cfg, setup)(state, batch)
    for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(jax.device_get(state["rest"])), strict=True):
        np.testing.assert_array_equal(a, b)
