"""MoE routing, losses and compute backends against hand-written references (single device)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from interaction_jax.config_lib import base_config
from interaction_jax.model.moe import (
    ExpertWeights,
    MoEFeedForward,
    RouterBias,
    Routing,
    expert_compute,
    load_balance_loss,
    route,
    update_router_bias,
    z_loss,
)

E, D, F = 4, 6, 5


def _weights(seed=0):
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    return ExpertWeights(
        jax.random.normal(k1, (E, D, F)) * 0.5,
        jax.random.normal(k2, (E, D, F)) * 0.5,
        jax.random.normal(k3, (E, F, D)) * 0.5,
    )


def _loop_reference(x, ids, wts, w):
    """Per-token Python loop over the chosen experts, SwiGLU in numpy from the raw arrays."""
    x, ids, wts = np.asarray(x, np.float64), np.asarray(ids), np.asarray(wts, np.float64)
    wg, wu, wd = (np.asarray(a, np.float64) for a in w)
    out = np.zeros_like(x)
    for t in range(x.shape[0]):
        for j in range(ids.shape[1]):
            e = ids[t, j]
            g = x[t] @ wg[e]
            h = g / (1 + np.exp(-g)) * (x[t] @ wu[e])
            out[t] += wts[t, j] * (h @ wd[e])
    return out


@pytest.mark.parametrize("impl", ["ragged_dot", "gather", "dense", "auto"])
def test_dropless_backends_match_loop(impl):
    x = jax.random.normal(jax.random.key(1), (7, D))
    # expert 2 receives no token at all
    ids = jnp.array([[0, 1], [1, 3], [3, 0], [0, 1], [1, 0], [3, 1], [0, 3]], jnp.int32)
    wts = jax.random.uniform(jax.random.key(2), ids.shape)
    routing = Routing(ids, wts, None)
    y = jax.jit(expert_compute, static_argnums=3)(x, routing, _weights(), impl)
    np.testing.assert_allclose(np.asarray(y), _loop_reference(x, ids, wts, _weights()), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("num_tokens", [1, 2, 3])
def test_auto_backend_at_decode_sizes_matches_loop(num_tokens):
    """"auto" gathers while T x k < E (here T = 1) and switches to all experts from there on."""
    x = jax.random.normal(jax.random.key(3), (num_tokens, D))
    ids = jnp.array([[2, 0], [1, 3], [3, 2]], jnp.int32)[:num_tokens]
    wts = jax.random.uniform(jax.random.key(4), ids.shape)
    y = jax.jit(expert_compute, static_argnums=3)(x, Routing(ids, wts, None), _weights(), "auto")
    np.testing.assert_allclose(np.asarray(y), _loop_reference(x, ids, wts, _weights()), rtol=1e-4, atol=1e-5)


def test_unknown_impl_is_clear():
    with pytest.raises(ValueError, match="unknown MoE impl 'nope'"):
        expert_compute(
            jnp.zeros((1, D)),
            Routing(jnp.zeros((1, 1), jnp.int32), jnp.ones((1, 1)), None),
            _weights(),
            "nope",
        )


def test_softmax_routing_picks_top_k_and_renormalises():
    logits = jnp.array([[0.0, 3.0, 1.0, 2.0], [5.0, 0.0, 0.0, 4.0]])
    r = route(logits, 2, "softmax")
    assert r.expert_ids.tolist() == [[1, 3], [0, 3]]
    p = np.exp(np.asarray(logits)) / np.exp(np.asarray(logits)).sum(-1, keepdims=True)
    expect0 = p[0, [1, 3]] / p[0, [1, 3]].sum()
    np.testing.assert_allclose(r.weights[0], expect0, rtol=1e-6)
    np.testing.assert_allclose(r.weights.sum(-1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(r.probs, p, rtol=1e-6)


def test_sigmoid_routing_bias_changes_selection_not_weights():
    logits = jnp.array([[2.0, 1.0, 0.0, -1.0]])
    r = route(logits, 2, "sigmoid")
    assert r.expert_ids.tolist() == [[0, 1]]
    bias = jnp.array([0.0, 0.0, 0.0, 5.0])  # pushes expert 3 into the selection
    rb = route(logits, 2, "sigmoid", bias)
    assert rb.expert_ids.tolist() == [[3, 0]]
    s = 1 / (1 + np.exp(-np.array([-1.0, 2.0])))
    np.testing.assert_allclose(rb.weights[0], s / s.sum(), rtol=1e-6)  # unbiased scores
    g = jax.grad(lambda b: route(logits, 2, "sigmoid", b).weights.sum())(bias)
    assert float(jnp.abs(g).sum()) == 0.0


def test_update_router_bias_moves_against_load():
    out = update_router_bias(jnp.zeros(4), jnp.array([10, 2, 4, 4]), 0.1)
    np.testing.assert_allclose(out, [-0.1, 0.1, 0.1, 0.1])  # mean is 5


def test_load_balance_loss_formula():
    t = 8
    uniform = Routing(
        jnp.arange(t, dtype=jnp.int32).reshape(t, 1) % E, jnp.ones((t, 1)), jnp.full((t, E), 1 / E)
    )
    np.testing.assert_allclose(load_balance_loss(uniform), 1.0, rtol=1e-6)
    probs = jnp.tile(jnp.array([0.7, 0.1, 0.1, 0.1]), (t, 1))
    collapsed = Routing(jnp.zeros((t, 1), jnp.int32), jnp.ones((t, 1)), probs)
    np.testing.assert_allclose(load_balance_loss(collapsed), E * 0.7, rtol=1e-6)
    # top-2, hand-computed: f = counts / (T k), P = mean probs
    ids = jnp.array([[0, 1], [0, 2]], jnp.int32)
    probs = jnp.array([[0.5, 0.3, 0.1, 0.1], [0.4, 0.1, 0.4, 0.1]])
    f = np.array([2, 1, 1, 0]) / 4
    p = np.asarray(probs).mean(0)
    np.testing.assert_allclose(load_balance_loss(Routing(ids, None, probs)), E * (f * p).sum(), rtol=1e-6)
    # masked tokens are excluded
    masked = load_balance_loss(Routing(ids, None, probs), jnp.array([1, 0]))
    np.testing.assert_allclose(
        masked, E * (np.array([0.5, 0.5, 0, 0]) * np.asarray(probs[0])).sum(), rtol=1e-6
    )


def test_z_loss_formula():
    logits = jnp.array([[0.0, 1.0, 2.0, 3.0], [1.0, 1.0, 1.0, 1.0]])
    lse = np.log(np.exp(np.asarray(logits)).sum(-1))
    np.testing.assert_allclose(z_loss(logits), (lse**2).mean(), rtol=1e-6)


def _cfg(**kw):
    c = base_config().model.moe
    c.num_experts, c.top_k, c.expert_ffn_dim = E, 2, F
    for k, v in kw.items():
        c[k] = v
    return c


def test_layer_matches_reference_and_shared_expert():
    x = jax.random.normal(jax.random.key(3), (2, 3, D))
    for shared in (False, True):
        m = MoEFeedForward(D, _cfg(shared_expert=shared), rngs=nnx.Rngs(0))
        y, aux = nnx.jit(lambda m, x: m(x))(m, x)
        xt = np.asarray(x.reshape(-1, D), np.float64)
        logits = xt @ np.asarray(m.router[...], np.float64)
        p = np.exp(logits - logits.max(-1, keepdims=True))
        ids = np.argsort(-p, axis=-1)[:, :2]  # numpy top-2 of the softmax
        top = np.take_along_axis(p, ids, -1)
        ref = _loop_reference(xt, ids, top / top.sum(-1, keepdims=True), m.expert_weights())
        if shared:
            g = xt @ np.asarray(m.shared_gate[...])
            ref += (g / (1 + np.exp(-g)) * (xt @ np.asarray(m.shared_up[...]))) @ np.asarray(
                m.shared_down[...]
            )
        np.testing.assert_allclose(np.asarray(y).reshape(-1, D), ref, rtol=1e-4, atol=1e-5)
        assert hasattr(m, "shared_gate") == shared
        assert set(aux) == {"load_balance_loss", "z_loss", "aux_loss", "expert_counts", "dropped_fraction"}
        assert int(aux["expert_counts"].sum()) == 2 * 3 * 2
        assert float(aux["dropped_fraction"]) == 0.0


def test_sigmoid_layer_bias_is_not_a_param():
    m = MoEFeedForward(D, _cfg(router="sigmoid"), rngs=nnx.Rngs(0))
    assert isinstance(m.router_bias, RouterBias)
    assert "router_bias" not in nnx.state(m, nnx.Param)
    y, _ = m(jnp.ones((1, 2, D)))
    assert y.shape == (1, 2, D)


def test_partition_metadata():
    m = MoEFeedForward(D, _cfg(shared_expert=True), rngs=nnx.Rngs(0))
    spec = nnx.get_partition_spec(nnx.state(m))
    assert tuple(spec["w_gate"].get_value()) == ("expert", "embed", "expert_mlp")
    assert tuple(spec["w_down"].get_value()) == ("expert", "expert_mlp", "embed")
    assert tuple(spec["shared_up"].get_value()) == ("embed", "mlp")


def test_gradients_flow_and_match_gather():
    x = jax.random.normal(jax.random.key(4), (2, 4, D))

    def grads(impl):
        m = MoEFeedForward(D, _cfg(impl=impl), rngs=nnx.Rngs(0))

        def loss(m):
            y, aux = m(x)
            return jnp.sum(y**2) + aux["aux_loss"]

        return nnx.state(nnx.jit(nnx.grad(loss))(m), nnx.Param)

    g_ragged, g_gather = grads("ragged_dot"), grads("gather")
    for name in ("router", "w_gate", "w_up", "w_down"):
        a, b = np.asarray(g_ragged[name][...]), np.asarray(g_gather[name][...])
        assert np.abs(a).sum() > 0, name
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6, err_msg=name)


def test_set_expert_mesh_reaches_nested_layers():
    from interaction_jax.model.moe import set_expert_mesh
    from interaction_jax.parallel import make_mesh

    class Outer(nnx.Module):
        def __init__(self):
            self.a = MoEFeedForward(D, _cfg(), rngs=nnx.Rngs(0))
            self.b = nnx.List([MoEFeedForward(D, _cfg(), rngs=nnx.Rngs(1))])

    outer, mesh = Outer(), make_mesh()
    assert set_expert_mesh(outer, mesh, capacity_factor=2.0) == 2
    assert outer.b[0].mesh is mesh and outer.a.capacity_factor == 2.0
