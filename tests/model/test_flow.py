"""Flow head: loss against its closed form, ODE sampler against analytic flows."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from interaction_jax.model.flow import FlowHead, denormalize, normalize, odeint

F, M, D = 2, 3, 8


class FixedVelocity(FlowHead):
    """A head whose prediction is a fixed constant, so the loss has a closed form."""

    def __call__(self, xt, t, h):
        return jnp.full(xt.shape, 0.3, jnp.float32)


def test_normalization_maps_dmel_range_to_unit_interval():
    np.testing.assert_allclose(normalize(jnp.array([-7.0, 2.0])), [-1.0, 1.0], atol=1e-6)
    np.testing.assert_allclose(denormalize(normalize(jnp.array([-3.3, 0.7]))), [-3.3, 0.7], atol=1e-6)


def test_loss_matches_closed_form():
    sigma = 0.01
    head = FixedVelocity(D, frames=F, n_mels=M, hidden_dim=16, num_layers=1, sigma_min=sigma, rngs=nnx.Rngs(0))
    rs = np.random.RandomState(0)
    mel = rs.uniform(-7, 2, (2, 5, F, M)).astype(np.float32)
    x0 = rs.randn(2, 5, F, M).astype(np.float32)
    t = rs.rand(2, 5).astype(np.float32)
    mask = np.array([[1, 0, 1, 1, 0], [0, 0, 1, 0, 0]], np.float32)
    loss = head.loss(jnp.zeros((2, 5, D)), mel, mask, jax.random.key(0), x0=x0, t=t)
    x1 = (mel + 2.5) / 4.5
    u = x1 - (1 - sigma) * x0  # the conditional OT velocity (independent of t)
    per_pos = ((0.3 - u) ** 2).mean(axis=(-2, -1))
    expected = (per_pos * mask).sum() / mask.sum()
    np.testing.assert_allclose(loss, expected, rtol=1e-5)


def test_real_head_loss_is_finite_and_has_gradients():
    head = FlowHead(D, frames=F, n_mels=M, hidden_dim=16, num_layers=1, rngs=nnx.Rngs(0))
    g, params = nnx.split(head)
    mel = jnp.full((3, F, M), -2.0)

    def loss(p):
        return nnx.merge(g, p).loss(jnp.ones((3, D)), mel, jnp.ones((3,)), jax.random.key(1))

    grads = jax.jit(jax.grad(loss))(params)
    norms = [float(np.linalg.norm(np.asarray(g))) for g in jax.tree.leaves(grads)]
    assert all(n > 0 for n in norms)


def test_constant_field_euler_is_exact():
    v = jnp.array([0.5, -2.0, 3.0])
    x0 = jnp.array([1.0, 2.0, -1.0])
    out = jax.jit(lambda x: odeint(lambda x, t: jnp.broadcast_to(v, x.shape), x, 3, "euler"))(x0)
    np.testing.assert_allclose(out, x0 + v, rtol=1e-6, atol=1e-6)


def test_linear_field_midpoint_beats_euler():
    a, steps = 0.9, 8
    x0 = jnp.array([1.0, -0.5])
    exact = x0 * np.exp(a)
    errs = {}
    for solver in ("euler", "midpoint"):
        out = odeint(lambda x, t: a * x, x0, steps, solver)
        errs[solver] = float(jnp.max(jnp.abs(out - exact)))
    # Euler's global error is O(h), midpoint's O(h^2); both bounded, midpoint much smaller.
    assert errs["euler"] < 0.3 and errs["midpoint"] < 0.01
    assert errs["midpoint"] < errs["euler"] / 10


def test_time_dependent_field_integrates_t():
    # dx/dt = 2t -> x(1) = x0 + 1; midpoint is exact for fields linear in t.
    out = odeint(lambda x, t: jnp.full_like(x, 2.0) * t, jnp.zeros(2), 4, "midpoint")
    np.testing.assert_allclose(out, 1.0, rtol=1e-6)


def test_sample_runs_in_jit_with_shape():
    head = FlowHead(D, frames=F, n_mels=M, hidden_dim=16, num_layers=1, rngs=nnx.Rngs(0))
    g, s = nnx.split(head)
    out = jax.jit(lambda s, h, k: nnx.merge(g, s).sample(h, k, steps=3, solver="midpoint"))(
        s, jnp.ones((2, 4, D)), jax.random.key(0)
    )
    assert out.shape == (2, 4, F, M) and bool(jnp.all(jnp.isfinite(out)))


def test_bad_solver_is_rejected():
    with pytest.raises(ValueError, match="solver"):
        odeint(lambda x, t: x, jnp.zeros(1), 2, "rk4")
