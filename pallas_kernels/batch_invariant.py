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

* chunked attention (`chunked_attention`, pure JAX, what the model uses with the flag): keys are
  visited in chunks of `BLOCK_KV` *absolute positions*, in increasing order, with an online
  softmax. Dot products and sums are explicit pairwise trees of elementwise multiplies / adds
  (`tree_sum`), `exp` is `exp_invariant` (XLA:CPU's own `exp` differs in the last bit between its
  vector and scalar code paths, i.e. by array shape), and a chunk with no visible key is an exact
  no-op. So the training forward (keys = the whole window) and the streaming engine (keys
  gathered from its ring cache, only the live chunks) give bitwise the same rows.

The price is throughput (no shape-specialised tiling, no split-K); `experiments/perf/kernels.py`
measures the matmul overhead against plain `x @ w`, `experiments/perf/batch_invariant.py` the
whole streaming step's.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from pallas_kernels._common import NEG_INF, is_interpret, pad_axis, resolve_implementation, round_up
from pallas_kernels.flash_attention import flash_attention

BLOCK_M, BLOCK_N, BLOCK_K = 16, 64, 64
BLOCK_KV = 64  # keys per attention chunk; chunk c holds absolute positions [c * BLOCK_KV, (c + 1) * BLOCK_KV)


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


def layer_norm_reference(x, scale, bias, *, eps: float = 1e-6, block_m: int = BLOCK_M) -> jax.Array:
    """Batch-invariant LayerNorm over the last axis in pure JAX (fixed row tiles, float32)."""

    def tile(xt):
        xf = xt.astype(jnp.float32)
        mean = jnp.sum(xf, axis=-1, keepdims=True) / xf.shape[-1]
        var = jnp.sum(jnp.square(xf - mean), axis=-1, keepdims=True) / xf.shape[-1]
        y = (xf - mean) * jax.lax.rsqrt(var + eps)
        return (y * scale.astype(jnp.float32) + bias.astype(jnp.float32)).astype(xt.dtype)

    return _map_row_tiles(tile, _rows(x), block_m).reshape(x.shape)


# ---- shape-independent elementwise pieces ---------------------------------------------------------
_LOG2E = 1.44269504088896341
_LN2_HI, _LN2_LO = 0.693359375, -2.12194440e-4
_EXP_POLY = (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1)


def exp_invariant(x: jax.Array) -> jax.Array:
    """float32 exp from IEEE +, *, floor and an exponent bitcast (Cephes expf, ~1 ulp).

    XLA:CPU's `exp` takes a vector or a scalar code path depending on where an element falls in
    the array, and the two differ in the last bit for some inputs, so `jnp.exp` of the same value
    can differ between a [1, 384] and a [3, 17] array. Basic IEEE ops are exactly rounded, so
    this one gives the same bits for an element whatever the array around it.
    """
    x = x.astype(jnp.float32)
    xc = jnp.clip(x, -87.0, 88.7)
    k = jnp.floor(xc * _LOG2E + 0.5)
    r = xc - k * _LN2_HI - k * _LN2_LO
    p = jnp.full_like(r, _EXP_POLY[0])
    for c in _EXP_POLY[1:]:
        p = p * r + c
    p = p * r * r + r + 1.0
    k1 = jnp.floor(k * 0.5)  # 2^k as 2^k1 * 2^(k - k1): both factors stay normal for k in [-126, 128]
    two = lambda e: jax.lax.bitcast_convert_type((e.astype(jnp.int32) + 127) << 23, jnp.float32)  # noqa: E731
    y = p * two(k1) * two(k - k1)
    return jnp.where(x < -87.0, 0.0, jnp.where(x > 88.72, jnp.inf, y))


def tree_sum(x: jax.Array, axis: int = 0) -> jax.Array:
    """Sum over `axis` as a fixed pairwise tree of elementwise adds (zero-padded to a power of two).

    The order of the adds depends only on the length of `axis`, never on the other axes or on
    how XLA vectorises a reduction, so a row's sum is the same in any batch. Cheapest (to compile
    and to run) when `axis` is the leading one: the halves are then contiguous slabs.
    """
    x = jnp.moveaxis(x, axis, 0)
    x = pad_axis(x, 0, 1 << max(x.shape[0] - 1, 0).bit_length())
    while x.shape[0] > 1:
        h = x.shape[0] // 2
        x = x[:h] + x[h:]
    return x[0]


# ---- chunked attention --------------------------------------------------------------------------
Chunk = tuple[jax.Array, jax.Array, jax.Array]  # k, v [B, C, KVH, hd]; kv positions [B, C] (-1 = no key)


def _chunk_update(carry, q, q_pos, chunk: Chunk, *, window: int, sinks: int, scale: float):
    """One online-softmax step over a chunk; a chunk with no visible key leaves `carry` unchanged.

    `q` is [hd, B, S, KVH, G] (head dim leading, so the tree sums slice contiguous slabs).
    """
    m, denom, acc = carry  # [B, S, KVH, G], same, [hd, B, S, KVH, G]
    k, v, kv_pos = chunk
    kk = jnp.transpose(k.astype(jnp.float32), (3, 0, 2, 1))[:, :, None, :, None, :]  # [hd, B, 1, KVH, 1, C]
    vv = jnp.transpose(v.astype(jnp.float32), (1, 3, 0, 2))[:, :, :, None, :, None]  # [C, hd, B, 1, KVH, 1]
    s = tree_sum(q[..., None] * kk, 0) * scale  # [B, S, KVH, G, C]
    qp, kp = q_pos[:, :, None], kv_pos[:, None, :]
    mask = (kp >= 0) & (kp <= qp)
    if window:
        mask &= (qp - kp < window) | (kp < sinks)
    mask = mask[:, :, None, None, :]
    s = jnp.where(mask, s, NEG_INF)
    m_new = jnp.maximum(m, jnp.max(s, axis=-1))
    p = jnp.where(mask, exp_invariant(s - m_new[..., None]), 0.0)
    alpha = exp_invariant(m - m_new)
    pt = jnp.moveaxis(p, -1, 0)  # [C, B, S, KVH, G]
    denom = alpha * denom + tree_sum(pt, 0)
    acc = alpha * acc + tree_sum(pt[:, None] * vv, 0)
    return m_new, denom, acc


def chunked_attention(
    q: jax.Array,
    q_positions: jax.Array,
    chunk: Callable[[jax.Array], Chunk],
    ranges: Sequence[tuple],
    *,
    window: int = 0,
    sinks: int = 0,
) -> jax.Array:
    """Batch-invariant GQA attention: q [B, S, H, hd] at `q_positions` [B, S] over key chunks.

    `chunk(c)` returns chunk c's keys, values and their absolute positions (-1 where there is no
    key); chunks are visited in `ranges` order ([(lo, hi), ...], ints or traced scalars; static
    bounds give a differentiable scan). Chunks skipped by one caller must be ones with no visible
    key for any of its queries; then two callers visiting different supersets of the visible
    chunks (in increasing order) return bitwise the same rows. Mask as `model.attention`:
    causal, `window` counting the query itself, the first `sinks` positions always visible.
    """
    b, s, h, hd = q.shape
    kvh = jax.eval_shape(chunk, jnp.int32(0))[0].shape[2]
    g = h // kvh
    qf = jnp.moveaxis(q.astype(jnp.float32).reshape(b, s, kvh, g, hd), -1, 0)
    carry = (
        jnp.full((b, s, kvh, g), NEG_INF, jnp.float32),
        jnp.zeros((b, s, kvh, g), jnp.float32),
        jnp.zeros((hd, b, s, kvh, g), jnp.float32),
    )
    update = functools.partial(_chunk_update, q=qf, q_pos=q_positions, window=int(window), sinks=int(sinks),
                               scale=hd**-0.5)
    # one loop over the concatenated ranges (one compiled body, however many ranges)
    lo0, hi0 = ranges[0]
    total, index = jnp.maximum(hi0 - lo0, 0), lambda i: lo0 + i
    for lo, hi in ranges[1:]:
        index = functools.partial(lambda i, prev, lo, start: jnp.where(i < start, prev(i), lo + i - start),
                                  prev=index, lo=lo, start=total)
        total = total + jnp.maximum(hi - lo, 0)
    if len(ranges) == 1 and isinstance(lo0, int) and isinstance(hi0, int):
        total = max(hi0 - lo0, 0)  # static: a scan (differentiable)
    carry = jax.lax.fori_loop(0, total, lambda i, cr: update(cr, chunk=chunk(index(i))), carry)
    _, denom, acc = carry
    out = jnp.where(denom > 0, acc / jnp.where(denom > 0, denom, 1.0), 0.0)
    return jnp.moveaxis(out, 0, -1).reshape(b, s, h, hd).astype(q.dtype)


def sequence_chunks(k: jax.Array, v: jax.Array, kv_positions: jax.Array, block_kv: int = BLOCK_KV):
    """(chunk fn, number of chunks) for keys stored in sequence order (key i at index i).

    The chunks are aligned to the index, so they are aligned to absolute positions when key i
    holds position i (a packed training window from the session's start, a cache filled in order).
    """
    t = k.shape[1]
    tp = round_up(max(t, 1), block_kv)
    k, v = pad_axis(k, 1, tp), pad_axis(v, 1, tp)
    pos = pad_axis(kv_positions.astype(jnp.int32), 1, tp, value=-1)

    def chunk(c):
        start = c * block_kv
        sl = lambda a: jax.lax.dynamic_slice_in_dim(a, start, block_kv, axis=1)  # noqa: E731
        return sl(k), sl(v), sl(pos)

    return chunk, tp // block_kv


def attention_sequence(q, k, v, q_positions, kv_positions, *, kv_valid=None, window: int = 0,
                       sinks: int = 0) -> jax.Array:
    """`chunked_attention` over keys in sequence order (the training forward's layout)."""
    kv_pos = kv_positions if kv_valid is None else jnp.where(kv_valid, kv_positions, -1)
    chunk, n = sequence_chunks(k, v, kv_pos)
    return chunked_attention(q, q_positions, chunk, [(0, n)], window=window, sinks=sinks)
