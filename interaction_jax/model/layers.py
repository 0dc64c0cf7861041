"""Small building blocks shared by every model file: annotated parameters, norms, linear maps.

Every parameter is created through `param`, which attaches logical axis names (see
`interaction_jax/parallel/rules.py`) as the variable's sharding metadata. Eager sharding is
off: logical names are not mesh axes, so the parallel code maps them through the rules table
(`nnx.get_partition_spec` on the state gives the logical spec) instead of Flax sharding at
creation time. Parameters are stored in `param_dtype` and cast to the compute `dtype` at use.

`batch_invariant=True` (`c.model.batch_invariant`) routes matmuls and norms through
`pallas_kernels.batch_invariant` (fixed row tiles, fixed reduction order), so a row's result does
not depend on how many rows share the call: the training forward on a whole window and the
streaming engine's micro-turn blocks give bitwise the same outputs. Off, nothing changes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

Initializer = Callable[..., jax.Array]


def param(
    rngs: nnx.Rngs,
    init: Initializer,
    shape: Sequence[int],
    axes: Sequence[str | None],
    dtype=jnp.float32,
) -> nnx.Param:
    """A parameter of `shape` initialised by `init`, annotated with logical `axes`."""
    if len(axes) != len(shape):
        raise ValueError(f"param: {len(axes)} logical axes {tuple(axes)} for shape {tuple(shape)}")
    value = init(rngs.params(), tuple(shape), dtype)
    return nnx.Param(value, sharding_names=tuple(axes), eager_sharding=False)


def matmul(x: jax.Array, w: jax.Array, batch_invariant: bool = False) -> jax.Array:
    """x [..., K] @ w [K, N] as one 2-D matmul over the rows of x (its leading dims flattened); with
    `batch_invariant` each row's result is independent of the batch.

    Flattened because XLA:CPU differentiates a dot that keeps x's batch and sequence dims through
    transposing copies of the activations' gradients (a SwiGLU's forward and backward at
    [4, 1600, 128] x 512 run 2-3x slower than the same rows as [6400, 128]); the reshape of
    leading dims is free, on every backend, and sharded leading dims stay sharded."""
    if batch_invariant:
        from pallas_kernels import batch_invariant as bi  # lazy: the default path never imports Pallas

        return bi.matmul(x, w)
    return (x.reshape(-1, x.shape[-1]) @ w).reshape(*x.shape[:-1], w.shape[-1])


def fan_in_init(fan_in: int, scale: float = 1.0) -> Initializer:
    """Normal init with std = scale / sqrt(fan_in), whatever the tensor's layout.

    Einsum-style weights ([D, H, hd], [H, hd, D], ...) have no single 'in' axis that
    `variance_scaling` could infer, so callers state the fan-in explicitly.
    """
    return nnx.initializers.normal(stddev=scale / max(fan_in, 1) ** 0.5)


class RMSNorm(nnx.Module):
    """RMSNorm with a learned scale (initialised at 1), computed in float32."""

    def __init__(self, dim: int, *, eps: float = 1e-6, param_dtype=jnp.float32, batch_invariant: bool = False,
                 rngs: nnx.Rngs):
        self.eps = eps
        self.batch_invariant = bool(batch_invariant)
        self.scale = param(rngs, nnx.initializers.ones, (dim,), ("norm",), param_dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.batch_invariant:
            from pallas_kernels import batch_invariant as bi

            return bi.rms_norm(x, self.scale[...], eps=self.eps)
        xf = x.astype(jnp.float32)
        y = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.eps)
        return (y * self.scale[...].astype(jnp.float32)).astype(x.dtype)


class LayerNorm(nnx.Module):
    """LayerNorm (mean and variance over the last axis) with scale and bias, in float32."""

    def __init__(self, dim: int, *, eps: float = 1e-6, param_dtype=jnp.float32, batch_invariant: bool = False,
                 rngs: nnx.Rngs):
        self.eps = eps
        self.batch_invariant = bool(batch_invariant)
        self.scale = param(rngs, nnx.initializers.ones, (dim,), ("norm",), param_dtype)
        self.bias = param(rngs, nnx.initializers.zeros, (dim,), ("norm",), param_dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.batch_invariant:
            from pallas_kernels import batch_invariant as bi

            return bi.layer_norm_reference(x, self.scale[...], self.bias[...], eps=self.eps)
        xf = x.astype(jnp.float32)
        mean = jnp.mean(xf, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(xf - mean), axis=-1, keepdims=True)
        y = (xf - mean) * jax.lax.rsqrt(var + self.eps)
        y = y * self.scale[...].astype(jnp.float32) + self.bias[...].astype(jnp.float32)
        return y.astype(x.dtype)


class Linear(nnx.Module):
    """y = x @ w (+ b) over the last axis, with logical axes for `w` [in, out]."""

    def __init__(
        self,
        d_in: int,
        d_out: int,
        axes: tuple[str, str],
        *,
        use_bias: bool = False,
        scale: float = 1.0,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        batch_invariant: bool = False,
        rngs: nnx.Rngs,
    ):
        self.dtype = dtype
        self.batch_invariant = bool(batch_invariant)
        self.w = param(rngs, fan_in_init(d_in, scale), (d_in, d_out), axes, param_dtype)
        self.b = param(rngs, nnx.initializers.zeros, (d_out,), (axes[1],), param_dtype) if use_bias else None

    def __call__(self, x: jax.Array) -> jax.Array:
        y = matmul(x.astype(self.dtype), self.w[...].astype(self.dtype), self.batch_invariant)
        if self.b is not None:
            y = y + self.b[...].astype(self.dtype)
        return y


def sinusoidal(t: jax.Array, dim: int, *, max_period: float = 10_000.0) -> jax.Array:
    """Transformer-style sin/cos features of a scalar per element: t [...] -> [..., dim] float32."""
    half = dim // 2
    freqs = jnp.exp(-jnp.log(max_period) * jnp.arange(half, dtype=jnp.float32) / max(half, 1))
    angles = t.astype(jnp.float32)[..., None] * freqs
    out = jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)
    if dim % 2:
        out = jnp.pad(out, [(0, 0)] * (out.ndim - 1) + [(0, 1)])
    return out
