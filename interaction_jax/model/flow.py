"""Mel flow-matching head (Lipman et al. 2022) and a fixed-step ODE sampler.

Conditional OT path between noise x0 ~ N(0, I) and data x1 at flow time t in [0, 1]:
    x_t = (1 - (1 - sigma_min) t) x0 + t x1,       target velocity  u = x1 - (1 - sigma_min) x0.
The head v(x_t, t | h) is a small residual MLP conditioned on the backbone state h of the
position (a linear map of h, added to every layer) and a sinusoidal embedding of t. It
predicts the velocity of all F x M mel frames of the position at once.

Mel normalisation: targets are log10-mel values clamped to [-7, 2] (the dMel range); the head
works on x1 = (mel + 2.5) / 4.5, which maps [-7, 2] onto [-1, 1] so data and N(0, I) noise
have comparable scale; `denormalize` inverts it after sampling.

Loss: mean over the F*M values of (v - u)^2, averaged over positions with audio_loss_mask.
Sampling integrates dx/dt = v from t=0 (noise) to t=1 with Euler or midpoint steps in a
`lax.fori_loop`, so it runs inside jit with a static step count.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from interaction_jax.model.layers import Linear, RMSNorm, sinusoidal

MEL_SHIFT = 2.5
MEL_SCALE = 4.5
SOLVERS = ("euler", "midpoint")


def normalize(mel: jax.Array) -> jax.Array:
    """log-mel in [-7, 2] -> [-1, 1]."""
    return (mel + MEL_SHIFT) / MEL_SCALE


def denormalize(x: jax.Array) -> jax.Array:
    return x * MEL_SCALE - MEL_SHIFT


def ot_path(x0: jax.Array, x1: jax.Array, t: jax.Array, sigma_min: float) -> tuple[jax.Array, jax.Array]:
    """(x_t, u_t) of the conditional OT path; t broadcasts against x from the left."""
    t = t.reshape(t.shape + (1,) * (x0.ndim - t.ndim))
    xt = (1.0 - (1.0 - sigma_min) * t) * x0 + t * x1
    u = x1 - (1.0 - sigma_min) * x0
    return xt, u


def masked_mse(v: jax.Array, u: jax.Array, mask: jax.Array) -> jax.Array:
    """sum_p mask_p * mean_{F,M}(v - u)^2 / max(sum_p mask_p, 1)  (v, u: [..., F, M]; mask [...])."""
    per_pos = jnp.mean(jnp.square(v.astype(jnp.float32) - u.astype(jnp.float32)), axis=(-2, -1))
    m = mask.astype(jnp.float32)
    return jnp.sum(per_pos * m) / jnp.maximum(jnp.sum(m), 1.0)


def odeint(
    velocity: Callable[[jax.Array, jax.Array], jax.Array], x0: jax.Array, steps: int, solver: str = "midpoint"
) -> jax.Array:
    """Integrates dx/dt = velocity(x, t) from t=0 to t=1 with `steps` fixed steps (jit-safe)."""
    if solver not in SOLVERS:
        raise ValueError(f"flow solver {solver!r}: expected one of {SOLVERS}")
    if steps < 1:
        raise ValueError(f"flow ode_steps must be >= 1, got {steps}")
    dt = 1.0 / steps

    if solver == "euler":

        def euler(i, x):
            t = jnp.asarray(i, jnp.float32) * dt
            return x + dt * velocity(x, t)

        return jax.lax.fori_loop(0, steps, euler, x0)

    # Midpoint as 2 * steps half-iterations with ONE velocity call each (even: x_mid from x at t;
    # odd: x from x_mid at t + dt/2): the same arithmetic, half the compiled velocity bodies.
    def midpoint(i, carry):
        x, x_mid = carry
        odd = i % 2 == 1
        t = jnp.asarray(i // 2, jnp.float32) * dt
        v = velocity(jnp.where(odd, x_mid, x), jnp.where(odd, t + 0.5 * dt, t))
        return jnp.where(odd, x + dt * v, x), x + 0.5 * dt * v

    return jax.lax.fori_loop(0, 2 * steps, midpoint, (x0, x0))[0]


class FlowHead(nnx.Module):
    """v(x_t, t | h): [..., F, M] velocity from x_t [..., F, M], t [...], h [..., D]."""

    def __init__(
        self,
        d_model: int,
        *,
        frames: int,
        n_mels: int,
        hidden_dim: int,
        num_layers: int,
        sigma_min: float = 1e-4,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        batch_invariant: bool = False,
        rngs: nnx.Rngs,
    ):
        self.frames, self.n_mels, self.hidden_dim = frames, n_mels, hidden_dim
        self.sigma_min = float(sigma_min)
        bi = bool(batch_invariant)
        kw = dict(dtype=dtype, param_dtype=param_dtype, batch_invariant=bi, rngs=rngs)
        fm = frames * n_mels
        self.in_proj = Linear(fm, hidden_dim, ("mel", "flow_hidden"), use_bias=True, **kw)
        self.cond_proj = Linear(d_model, hidden_dim, ("embed", "flow_hidden"), use_bias=True, **kw)
        self.time_proj = Linear(hidden_dim, hidden_dim, ("flow_hidden", "flow_hidden"), use_bias=True, **kw)
        self.norms = nnx.List(
            [RMSNorm(hidden_dim, param_dtype=param_dtype, batch_invariant=bi, rngs=rngs) for _ in range(num_layers)]
        )
        self.ups = nnx.List(
            [
                Linear(hidden_dim, 2 * hidden_dim, ("flow_hidden", "flow_hidden"), use_bias=True, **kw)
                for _ in range(num_layers)
            ]
        )
        self.downs = nnx.List(
            [
                Linear(2 * hidden_dim, hidden_dim, ("flow_hidden", "flow_hidden"), use_bias=True, scale=0.5, **kw)
                for _ in range(num_layers)
            ]
        )
        self.out_norm = RMSNorm(hidden_dim, param_dtype=param_dtype, batch_invariant=bi, rngs=rngs)
        self.out_proj = Linear(hidden_dim, fm, ("flow_hidden", "mel"), use_bias=True, scale=0.5, **kw)

    def __call__(self, xt: jax.Array, t: jax.Array, h: jax.Array) -> jax.Array:
        lead = xt.shape[:-2]
        t = jnp.broadcast_to(t, lead)
        return self._field(xt, self.cond_proj(h) + self._time(t))

    def _time(self, t: jax.Array) -> jax.Array:
        return self.time_proj(sinusoidal(t * 1000.0, self.hidden_dim))

    def _field(self, xt: jax.Array, cond: jax.Array) -> jax.Array:
        """The velocity given the conditioning vector cond [..., hidden] (state + time)."""
        lead = xt.shape[:-2]
        z = self.in_proj(xt.reshape(lead + (-1,))) + cond
        for norm, up, down in zip(self.norms, self.ups, self.downs, strict=True):
            z = z + down(jax.nn.gelu(up(norm(z) + cond)))
        v = self.out_proj(self.out_norm(z))
        return v.reshape(lead + (self.frames, self.n_mels)).astype(jnp.float32)

    def loss(
        self,
        h: jax.Array,
        mel_targets: jax.Array,
        mask: jax.Array,
        rng: jax.Array,
        *,
        x0: jax.Array | None = None,
        t: jax.Array | None = None,
    ) -> jax.Array:
        """Flow-matching loss on positions with `mask`: h [..., D], mel_targets [..., F, M] (log-mel).
        Noise `x0` [..., F, M] and times `t` [...] are drawn from `rng` unless given (tests)."""
        k0, kt = jax.random.split(rng)
        x1 = normalize(mel_targets.astype(jnp.float32))
        if x0 is None:
            x0 = jax.random.normal(k0, x1.shape, jnp.float32)
        if t is None:
            t = jax.random.uniform(kt, x1.shape[:-2], jnp.float32)
        xt, u = ot_path(x0, x1, t, self.sigma_min)
        return masked_mse(self(xt, t, h), u, mask)

    def sample(self, h: jax.Array, rng: jax.Array, *, steps: int, solver: str = "midpoint") -> jax.Array:
        """Mel frames [..., F, M] (log-mel units) for states h [..., D]: ODE from noise at t=0 to t=1."""
        return self.sample_from(h, self.noise(rng, h.shape[:-1]), steps=steps, solver=solver)

    def noise(self, rng: jax.Array, lead: tuple[int, ...] = ()) -> jax.Array:
        """The ODE's starting point x0 [*lead, F, M] ~ N(0, I) drawn from `rng`."""
        return jax.random.normal(rng, tuple(lead) + (self.frames, self.n_mels), jnp.float32)

    def sample_from(self, h: jax.Array, x0: jax.Array, *, steps: int, solver: str = "midpoint") -> jax.Array:
        """`sample` from given noise x0 [..., F, M]: lets a batch of positions each use its own key
        (noise drawn per key) while the head runs once on the whole batch (no vmap over it)."""
        ch = self.cond_proj(h)  # loop-invariant: projected once, not per ODE step
        return denormalize(odeint(lambda x, t: self._field(x, ch + self._time(t)), x0, steps, solver))
