"""Batch-invariant matmul, RMSNorm and attention: a row's result never depends on its batch.

Ordinary XLA/cuBLAS kernels pick tilings and split-K factors from the problem shape, so row i of
`x @ w` can differ in the last bits between a batch of 1 and a batch of N (e.g. XLA:CPU already
does for M = 1 vs M = 2). Teacher-forced training and micro-turn streaming see the same token in
different batch / sequence shapes, so with `c.model.batch_invariant=True` every reduction must run
in an order fixed by constants, never by M, B, S or T:

* matmul / rms_norm: rows are processed in tiles of a *fixed* `block_m`; each tile is the same
  computation whatever the number of rows, with K (or D) reduced in fixed `block_k` chunks in
  order. The kernel is a Pallas grid over row tiles; the pure-JAX form (CPU) maps (`lax.map`,
  i.e. one compiled loop body) over the same tiles, so it is invariant too.
* attention: the flash kernel already reduces each query row over kv blocks of fixed `block_k`
  in order, and blocks a row cannot see are exact no-ops; with fixed block sizes a row's result
  is independent of batch size, query count and cache length. There is no separate pure-JAX
  form: on CPU the kernel runs in interpret mode.

The price is throughput (no shape-specialised tiling, no split-K); `experiments/perf/kernels.py`
measures the matmul overhead against plain `x @ w`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from pallas_kernels._common import is_interpret, pad_axis, resolve_implementation, round_up
from pallas_kernels.flash_attention import flash_attention

BLOCK_M, BLOCK_N, BLOCK_K = 16, 64, 64


def _rows(x):
    return x.reshape(-1, x.shape[-1])


def _map_row_tiles(fn, x2d, block_m):
    """fn over fixed-shape tiles [block_m, ...] of x2d, one compiled loop body for every M."""
    m = x2d.shape[0]
    mp = round_up(max(m, 1), block_m)
    tiles = pad_axis(x2d, 0, mp).reshape(mp // block_m, block_m, x2d.shape[1])
    out = jax.lax.map(fn, tiles)
    return out.reshape(mp, -1)[:m]


def matmul_reference(x, w, *, block_m: int = BLOCK_M, block_k: int = BLOCK_K) -> jax.Array:
    """Batch-invariant x [..., K] @ w [K, N] in pure JAX (float32 accumulation in K-chunk order)."""
    k, n = w.shape
    kp = round_up(k, block_k)
    wp = pad_axis(w, 0, kp).reshape(kp // block_k, block_k, n)

    def tile(xt):
        xt = pad_axis(xt, 1, kp).reshape(block_m, kp // block_k, block_k)

        def step(acc, i):
            return acc + jnp.dot(xt[:, i], wp[i], preferred_element_type=jnp.float32), None

        acc, _ = jax.lax.scan(step, jnp.zeros((block_m, n), jnp.float32), jnp.arange(kp // block_k))
        return acc.astype(x.dtype)

    return _map_row_tiles(tile, _rows(x), block_m).reshape(*x.shape[:-1], n)


def _matmul_kernel(x_ref, w_ref, o_ref, *, block_k: int, num_k: int):
    def step(i, acc):
        cols = pl.ds(pl.multiple_of(i * block_k, block_k), block_k)
        return acc + jnp.dot(x_ref[:, cols], w_ref[cols, :], preferred_element_type=jnp.float32)

    acc = jax.lax.fori_loop(0, num_k, step, jnp.zeros(o_ref.shape, jnp.float32))
    o_ref[...] = acc.astype(o_ref.dtype)


def matmul(x, w, *, implementation: str | None = None, block_m: int = BLOCK_M, block_n: int = BLOCK_N,
           block_k: int = BLOCK_K) -> jax.Array:
    """Batch-invariant x [..., K] @ w [K, N]; same fixed blocks for every batch shape."""
    impl = resolve_implementation(implementation)
    if impl in ("reference", "mosaic"):
        return matmul_reference(x, w, block_m=block_m, block_k=block_k)
    x2 = _rows(x)
    m, k = x2.shape
    n = w.shape[1]
    mp, kp, np_ = round_up(max(m, 1), block_m), round_up(k, block_k), round_up(n, block_n)
    out = pl.pallas_call(
        functools.partial(_matmul_kernel, block_k=block_k, num_k=kp // block_k),
        out_shape=jax.ShapeDtypeStruct((mp, np_), x.dtype),
        grid=(mp // block_m, np_ // block_n),
        in_specs=[pl.BlockSpec((block_m, kp), lambda i, j: (i, 0)), pl.BlockSpec((kp, block_n), lambda i, j: (0, j))],
        out_specs=pl.BlockSpec((block_m, block_n), lambda i, j: (i, j)),
        interpret=is_interpret(impl),
        name="batch_invariant_matmul",
    )(pad_axis(pad_axis(x2, 0, mp), 1, kp), pad_axis(pad_axis(w, 0, kp), 1, np_))
    return out[:m, :n].reshape(*x.shape[:-1], n)


def _rms_tile(xt, scale, eps, d):
    xf = xt.astype(jnp.float32)
    ms = jnp.sum(xf * xf, axis=-1, keepdims=True) / d
    return (xf * jax.lax.rsqrt(ms + eps) * scale.astype(jnp.float32)).astype(xt.dtype)


def rms_norm_reference(x, scale, *, eps: float = 1e-6, block_m: int = BLOCK_M) -> jax.Array:
    """Batch-invariant RMSNorm over the last axis in pure JAX (fixed row tiles)."""
    d = x.shape[-1]
    return _map_row_tiles(lambda t: _rms_tile(t, scale, eps, d), _rows(x), block_m).reshape(x.shape)


def _rms_kernel(x_ref, s_ref, o_ref, *, eps: float, d: int):
    o_ref[...] = _rms_tile(x_ref[...], s_ref[...], eps, d).astype(o_ref.dtype)


def rms_norm(x, scale, *, eps: float = 1e-6, implementation: str | None = None, block_m: int = BLOCK_M) -> jax.Array:
    """Batch-invariant RMSNorm: x [..., D] * rsqrt(mean(x^2) + eps) * scale [D]."""
    impl = resolve_implementation(implementation)
    if impl in ("reference", "mosaic"):
        return rms_norm_reference(x, scale, eps=eps, block_m=block_m)
    x2 = _rows(x)
    m, d = x2.shape
    mp = round_up(max(m, 1), block_m)
    out = pl.pallas_call(
        functools.partial(_rms_kernel, eps=float(eps), d=d),
        out_shape=jax.ShapeDtypeStruct((mp, d), x.dtype),
        grid=(mp // block_m,),
        in_specs=[pl.BlockSpec((block_m, d), lambda i: (i, 0)), pl.BlockSpec((d,), lambda i: (0,))],
        out_specs=pl.BlockSpec((block_m, d), lambda i: (i, 0)),
        interpret=is_interpret(impl),
        name="batch_invariant_rms_norm",
    )(pad_axis(x2, 0, mp), scale)
    return out[:m].reshape(x.shape)


def attention(q, k, v, *, implementation: str | None = None, **mask_kwargs) -> jax.Array:
    """Batch-invariant attention: the flash kernel with fixed 16 x 16 blocks (interpret mode on CPU).

    16 is flash_attention's smallest block, so its short-sequence shrinking never changes the
    blocks. `mask_kwargs` are flash_attention's (causal, window, sinks, positions, segment ids, mask).
    """
    impl = resolve_implementation(implementation)
    if impl in ("reference", "mosaic"):
        impl = "interpret"
    return flash_attention(q, k, v, block_q=16, block_k=16, implementation=impl, **mask_kwargs)
