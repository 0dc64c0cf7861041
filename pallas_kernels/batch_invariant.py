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

* chunked attention (`chunked_attention`, pure JAX, what the model uses with the flag): query
  rows are cut into fixed tiles of `BLOCK_Q` rows (`lax.map`), and each tile visits the keys in
  chunks of `BLOCK_KV` *absolute positions*, in increasing order, with an online softmax whose
  two dots per chunk have constant shapes; `exp` is `exp_invariant` (XLA:CPU's own `exp`
  differs in the last bit between its vector and scalar code paths, i.e. by array shape); a
  chunk with no visible key is an exact no-op, so a caller may skip it. The training forward
  (keys = the whole window, every chunk) and the streaming engine (keys gathered from its ring
  cache, only the live chunks) give bitwise the same rows.

The price is throughput (no shape-specialised tiling, no split-K); `experiments/perf/kernel_timings.py`
measures the matmul overhead against plain `x @ w`, `experiments/perf/batch_invariant.py` the
whole streaming step's.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from pallas_kernels._common import (
    MOSAIC,
    NEG_INF,
    head_dim_block,
    is_interpret,
    pad_axis,
    resolve_implementation,
    round_up,
)
from pallas_kernels.flash_attention import flash_attention

BLOCK_M, BLOCK_N, BLOCK_K = 16, 64, 64
BLOCK_KV = 128  # keys per attention chunk; chunk c holds absolute positions [c * BLOCK_KV, (c + 1) * BLOCK_KV)
BLOCK_Q = 8  # query rows (position x head of a kv group) per attention tile


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
    # the barrier fixes the weight's layout before the loop: without it XLA may fold a transposed
    # `w` (a tied unembedding's table.T) into the dot when the loop has one trip (M <= block_m)
    # but not when it has several, and the two dots can round differently
    wp = jax.lax.optimization_barrier(pad_axis(w, 0, kp).reshape(kp // block_k, block_k, n))

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
    if impl in ("reference", *MOSAIC):
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
    if impl in ("reference", *MOSAIC):
        return rms_norm_reference(x, scale, eps=eps, block_m=block_m)
    x2 = _rows(x)
    m, d = x2.shape
    mp = round_up(max(m, 1), block_m)
    dp = head_dim_block(d)  # a Triton block loads whole power-of-two rows; zero columns add 0 to the sum
    out = pl.pallas_call(
        functools.partial(_rms_kernel, eps=float(eps), d=d),
        out_shape=jax.ShapeDtypeStruct((mp, dp), x.dtype),
        grid=(mp // block_m,),
        in_specs=[pl.BlockSpec((block_m, dp), lambda i: (i, 0)), pl.BlockSpec((dp,), lambda i: (0,))],
        out_specs=pl.BlockSpec((block_m, dp), lambda i: (i, 0)),
        interpret=is_interpret(impl),
        name="batch_invariant_rms_norm",
    )(pad_axis(pad_axis(x2, 0, mp), 1, dp), pad_axis(scale, 0, dp))
    return out[:m, :d].reshape(x.shape)


def attention(q, k, v, *, implementation: str | None = None, **mask_kwargs) -> jax.Array:
    """Batch-invariant attention: the flash kernel with fixed 16 x 16 blocks (interpret mode on CPU).

    16 is flash_attention's smallest block, so its short-sequence shrinking never changes the
    blocks. `mask_kwargs` are flash_attention's (causal, window, sinks, positions, segment ids, mask).
    """
    impl = resolve_implementation(implementation)
    if impl in ("reference", *MOSAIC):
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


# ---- chunked attention --------------------------------------------------------------------------
# chunk(c, b) -> keys, values [C, KVH, hd] of slot b at positions [c*C, (c+1)*C) and those positions
# [C] (-1 where there is no key).
Chunk = tuple[jax.Array, jax.Array, jax.Array]
ChunkFn = Callable[[jax.Array, jax.Array], Chunk]
Ranges = Sequence[tuple]


def live_chunk_ranges(q_positions: jax.Array, valid: jax.Array, *, window: int, sinks: int,
                      block_kv: int = BLOCK_KV) -> list[tuple]:
    """[(lo, hi), ...] of the key chunks that can hold a key visible to a valid query at `q_positions`:
    the sink chunks, then the window's chunks, in increasing order (traced bounds). Any chunk
    outside them is fully masked for every valid query, so skipping it is exact."""
    big = jnp.iinfo(jnp.int32).max
    q_lo = jnp.min(jnp.where(valid, q_positions, big))
    q_hi = jnp.max(jnp.where(valid, q_positions, -1))
    hi = q_hi // block_kv + 1  # 0 when no query is valid
    if not window:
        return [(0, hi)]
    ns = -(-int(sinks) // block_kv)
    lo = jnp.maximum(ns, jnp.floor_divide(jnp.minimum(q_lo, big - 1) - window + 1, block_kv))
    return ([(0, jnp.minimum(ns, hi))] if ns else []) + [(lo, hi)]


def loop_ranges(ranges: Ranges, body, carry):
    """fori_loop over the concatenation of `ranges` (one compiled body); a scan when all are static."""
    lo0, hi0 = ranges[0]
    total, index = jnp.maximum(hi0 - lo0, 0), lambda i: lo0 + i
    for lo, hi in ranges[1:]:
        index = functools.partial(lambda i, prev, lo, start: jnp.where(i < start, prev(i), lo + i - start),
                                  prev=index, lo=lo, start=total)
        total = total + jnp.maximum(hi - lo, 0)
    if len(ranges) == 1 and isinstance(lo0, int) and isinstance(hi0, int):
        total = max(hi0 - lo0, 0)
    return jax.lax.fori_loop(0, total, lambda i, c: body(index(i), c), carry)


def _tile_attention(qt, q_pos, q_valid, b, chunk: ChunkFn, ranges, *, window: int, sinks: int, scale: float):
    """One tile of query rows qt [KVH, BQ, hd] (all of slot b) against its chunks, online softmax.

    Every op has a shape fixed by constants (KVH, BQ, C, hd), whatever the caller's batch,
    query count or cache size: the two dots per chunk are [KVH, BQ, hd] x [KVH, hd, C] and
    [KVH, BQ, C] x [KVH, C, hd + 1] (the extra all-ones value column yields the softmax
    denominator in the same dot). A chunk with no visible key leaves the state unchanged.
    """
    kvh, bq, hd = qt.shape
    live = ranges(q_pos, q_valid) if callable(ranges) else ranges

    def body(c, carry):
        m, acc = carry  # [KVH, BQ], [KVH, BQ, hd + 1]
        k, v, kv_pos = chunk(c, b)
        s = jnp.einsum("kqd,ckd->kqc", qt, k.astype(jnp.float32), preferred_element_type=jnp.float32) * scale
        qp, kp = q_pos[:, None], kv_pos[None, :]
        mask = (kp >= 0) & (kp <= qp) & q_valid[:, None]
        if window:
            mask &= (qp - kp < window) | (kp < sinks)
        s = jnp.where(mask[None], s, NEG_INF)
        m_new = jnp.maximum(m, jnp.max(s, axis=-1))
        p = jnp.where(mask[None], exp_invariant(s - m_new[..., None]), 0.0)
        v1 = jnp.concatenate([v.astype(jnp.float32), jnp.ones(v.shape[:-1] + (1,), jnp.float32)], axis=-1)
        pv = jnp.einsum("kqc,ckd->kqd", p, v1, preferred_element_type=jnp.float32)
        return m_new, exp_invariant(m - m_new)[..., None] * acc + pv

    init = (jnp.full((kvh, bq), NEG_INF, jnp.float32), jnp.zeros((kvh, bq, hd + 1), jnp.float32))
    _, acc = loop_ranges(live, body, init)
    den = acc[..., hd:]
    return jnp.where(den > 0, acc[..., :hd] / jnp.where(den > 0, den, 1.0), 0.0)


def chunked_attention(
    q: jax.Array,
    q_positions: jax.Array,
    chunk: ChunkFn,
    ranges: Ranges | Callable[[jax.Array, jax.Array], Ranges],
    *,
    window: int = 0,
    sinks: int = 0,
    q_valid: jax.Array | None = None,
    block_q: int = BLOCK_Q,
) -> jax.Array:
    """Batch-invariant GQA attention: q [B, S, H, hd] at `q_positions` [B, S] over key chunks.

    Query rows (position x head-in-group) of each slot are cut into tiles of `block_q` rows,
    mapped with `lax.map`; each tile visits the chunks of `ranges` in order: static [(lo, hi)]
    (differentiable), or `ranges(tile_positions [BQ], tile_valid [BQ])` for per-tile traced
    ranges such as `live_chunk_ranges`. Two callers whose ranges cover every chunk with a
    visible key, in increasing order, return bitwise the same rows. Mask as `model.attention`
    (causal, `window` counting the query itself, the first `sinks` positions always visible);
    rows with `q_valid` False (idle slots) get zeros.
    """
    b, s, h, hd = q.shape
    kvh = jax.eval_shape(chunk, jnp.int32(0), jnp.int32(0))[0].shape[1]
    g = h // kvh
    rows = s * g
    rp = round_up(max(rows, 1), block_q)
    nt = rp // block_q
    # rows r = position * g + group member, per (slot, kv head)
    qr = q.astype(jnp.float32).reshape(b, s, kvh, g, hd).transpose(0, 2, 1, 3, 4).reshape(b, kvh, rows, hd)
    qr = pad_axis(qr, 2, rp).reshape(b, kvh, nt, block_q, hd).transpose(0, 2, 1, 3, 4).reshape(b * nt, kvh, block_q, hd)
    valid = jnp.ones((b, s), bool) if q_valid is None else q_valid.astype(bool)
    tile_rows = lambda a, fill: pad_axis(jnp.repeat(a, g, axis=1), 1, rp, fill).reshape(b * nt, block_q)  # noqa: E731
    pos_t = tile_rows(q_positions.astype(jnp.int32), -1)
    valid_t = tile_rows(valid, False)
    slot_t = jnp.repeat(jnp.arange(b, dtype=jnp.int32), nt)
    tile = functools.partial(_tile_attention, chunk=chunk, ranges=ranges, window=int(window), sinks=int(sinks),
                             scale=hd**-0.5)
    out = jax.lax.map(lambda a: tile(*a), (qr, pos_t, valid_t, slot_t))  # [B * nt, KVH, BQ, hd]
    out = out.reshape(b, nt, kvh, block_q, hd).transpose(0, 2, 1, 3, 4).reshape(b, kvh, rp, hd)[:, :, :rows]
    return out.reshape(b, kvh, s, g, hd).transpose(0, 2, 1, 3, 4).reshape(b, s, h, hd).astype(q.dtype)


def sequence_chunks(k: jax.Array, v: jax.Array, kv_positions: jax.Array, block_kv: int = BLOCK_KV):
    """(chunk fn, number of chunks) for keys stored in sequence order (key i at index i).

    The chunks are aligned to the index, so they are aligned to absolute positions when key i
    holds position i (a packed training window from the session's start, a cache filled in order).
    """
    t = k.shape[1]
    tp = round_up(max(t, 1), block_kv)
    k, v = pad_axis(k, 1, tp), pad_axis(v, 1, tp)
    pos = pad_axis(kv_positions.astype(jnp.int32), 1, tp, value=-1)

    def chunk(c, b):
        start = c * block_kv
        sl = lambda a: jax.lax.dynamic_slice_in_dim(a[b], start, block_kv, axis=0)  # noqa: E731
        return sl(k), sl(v), sl(pos)

    return chunk, tp // block_kv


def attention_sequence(q, k, v, q_positions, kv_positions, *, kv_valid=None, window: int = 0,
                       sinks: int = 0) -> jax.Array:
    """`chunked_attention` over keys in sequence order (the training forward's layout); static
    chunk ranges (every chunk), so it is differentiable."""
    kv_pos = kv_positions if kv_valid is None else jnp.where(kv_valid, kv_positions, -1)
    chunk, n = sequence_chunks(k, v, kv_pos)
    return chunked_attention(q, q_positions, chunk, [(0, n)], window=window, sinks=sinks)
