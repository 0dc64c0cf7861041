"""Micro-turn decode attention: a few new query positions per slot against the persistent KV cache.

q [B, S, H, hd] holds the S positions of one micro-turn block for each of B slots; the cache is
k/v [B, T, KVH, hd] (T = max_len) with `lengths` [B] valid rows per slot (the block's own K/V
already written). Query i of slot b sits at cache row q_positions[b, i] (default: the last S valid
rows) and sees row j iff  j < lengths[b],  j <= q_positions[b, i]  and the sliding-window/sinks
rule of the model holds. A ring-buffer cache passes `kv_positions` (the position each row holds,
-1 empty) and the rules apply to those positions instead of row indices.

Split-K ("flash decoding"): the grid is (slot, kv head, split). Each program takes every query of
one GQA group (S * H/KVH rows, so the cache is read once per kv head) against one split of
`split_size` cache rows, walking it in `block_k` sub-blocks with an online softmax, and writes a
partial (max, sum, acc). The partials are combined in JAX in a fixed sequential order. The split
size is a *fixed* parameter, not derived from B or T, and splits past a slot's length are skipped
exactly, so a slot's result is bitwise the same whatever the number of slots in the batch, the
other slots' lengths or the cache capacity T -- the property the streaming bitwise-alignment
tests need.
"""

from __future__ import annotations

import functools

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


def _visible(rows_pos, cols, kv_pos, length, window: int, sinks: int):
    """Row `cols` (holding absolute position kv_pos, -1 = empty) is visible from a query at rows_pos."""
    vis = (cols < length) & (kv_pos >= 0) & (kv_pos <= rows_pos)
    if window:
        vis &= (rows_pos - kv_pos < window) | (kv_pos < sinks)
    return vis


def _split_kernel(len_ref, q_ref, qpos_ref, kvpos_ref, k_ref, v_ref, acc_ref, m_ref, l_ref, *, split_size: int,
                  block_k: int, scale: float, window: int, sinks: int):
    length = len_ref[0]
    start = pl.program_id(2) * split_size
    rows = q_ref.shape[0]

    @pl.when(start >= length)
    def _empty():
        acc_ref[...] = jnp.zeros(acc_ref.shape, acc_ref.dtype)
        m_ref[...] = jnp.full(m_ref.shape, NEG_INF, m_ref.dtype)
        l_ref[...] = jnp.zeros(l_ref.shape, l_ref.dtype)

    @pl.when(start < length)
    def _compute():
        q = q_ref[...]
        q_pos = qpos_ref[...][:, None]

        def body(j, carry):
            m, den, acc = carry
            sub = pl.ds(pl.multiple_of(j * block_k, block_k), block_k)
            cols = start + j * block_k + jax.lax.broadcasted_iota(jnp.int32, (1, block_k), 1)
            vis = _visible(q_pos, cols, kvpos_ref[sub][None, :], length, window, sinks)
            k, v = k_ref[sub, :], v_ref[sub, :]
            s = jax.lax.dot_general(q, k, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32) * scale
            s = jnp.where(vis, s, NEG_INF)
            m_new = jnp.maximum(m, jnp.max(s, axis=-1))
            alpha = jnp.exp(m - m_new)
            p = jnp.where(vis, jnp.exp(s - m_new[:, None]), 0.0)
            pv = jnp.dot(p.astype(v.dtype), v, preferred_element_type=jnp.float32)
            return m_new, alpha * den + jnp.sum(p, axis=-1), acc * alpha[:, None] + pv

        init = (jnp.full((rows,), NEG_INF, jnp.float32), jnp.zeros((rows,), jnp.float32),
                jnp.zeros(q.shape, jnp.float32))
        m, den, acc = jax.lax.fori_loop(0, split_size // block_k, body, init)
        acc_ref[...], m_ref[...], l_ref[...] = acc, m, den


def _default_positions(lengths, s):
    return lengths[:, None] - s + jnp.arange(s, dtype=jnp.int32)[None, :]


def _kv_positions(kv_positions, b: int, t: int) -> jax.Array:
    if kv_positions is None:  # row j holds position j
        return jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32)[None], (b, t))
    kv_positions = jnp.asarray(kv_positions, jnp.int32)
    if kv_positions.shape != (b, t):
        raise ValueError(f"decode_attention: kv_positions must be [B, T] = {(b, t)}, got {kv_positions.shape}")
    return kv_positions


def decode_attention_reference(q, k_cache, v_cache, lengths, *, q_positions=None, kv_positions=None, window: int = 0,
                               sinks: int = 0, scale: float | None = None) -> jax.Array:
    """Dense masked softmax over the whole cache (float32 softmax; rows seeing nothing give 0)."""
    b, s, h, hd = q.shape
    t, kvh = k_cache.shape[1], k_cache.shape[2]
    lengths = jnp.asarray(lengths, jnp.int32)
    q_pos = _default_positions(lengths, s) if q_positions is None else jnp.asarray(q_positions, jnp.int32)
    cols = jnp.arange(t, dtype=jnp.int32)[None, None, :]
    kv_pos = _kv_positions(kv_positions, b, t)[:, None, :]
    vis = _visible(q_pos[:, :, None], cols, kv_pos, lengths[:, None, None], window, sinks)  # [B, S, T]
    scale = hd**-0.5 if scale is None else scale
    qg = q.reshape(b, s, kvh, h // kvh, hd).astype(jnp.float32)
    logits = jnp.einsum("bskgd,btkd->bkgst", qg, k_cache.astype(jnp.float32)) * scale
    logits = jnp.where(vis[:, None, None], logits, -jnp.inf)
    mx = jnp.max(logits, axis=-1, keepdims=True)
    e = jnp.where(vis[:, None, None], jnp.exp(logits - jnp.where(jnp.isfinite(mx), mx, 0.0)), 0.0)
    den = jnp.sum(e, axis=-1, keepdims=True)
    out = jnp.einsum("bkgst,btkd->bskgd", e / jnp.where(den > 0, den, 1.0), v_cache.astype(jnp.float32))
    return out.reshape(b, s, h, hd).astype(q.dtype)


def _kernel_call(q, k_cache, v_cache, lengths, q_pos, kv_pos, *, window, sinks, scale, split_size, block_k,
                 implementation):
    b, s, h, hd = q.shape
    t, kvh = k_cache.shape[1], k_cache.shape[2]
    g = h // kvh
    rows = s * g
    rows_p = max(16, pl.next_power_of_2(rows))  # fixed by (S, group) only, never by B or T
    # [B, S, KVH, G, hd] -> [B, KVH, S*G, hd]: one program serves every query head of a kv head.
    qr = q.reshape(b, s, kvh, g, hd).transpose(0, 2, 1, 3, 4).reshape(b, kvh, rows, hd)
    mosaic = implementation in MOSAIC
    # Zero head-dim columns: same q.k, zero output columns (sliced off). Mosaic tiles are 128 lanes wide.
    hdp = round_up(hd, 128) if mosaic else head_dim_block(hd)
    qr = pad_axis(pad_axis(qr, 2, rows_p), 3, hdp)
    qpos = pad_axis(jnp.repeat(q_pos, g, axis=1), 1, rows_p, -1)  # padded rows see nothing
    tp = round_up(t, split_size)
    kt = pad_axis(pad_axis(k_cache, 1, tp), 3, hdp).transpose(0, 2, 1, 3)
    vt = pad_axis(pad_axis(v_cache, 1, tp), 3, hdp).transpose(0, 2, 1, 3)
    kvp = pad_axis(kv_pos, 1, tp, -1)  # padded rows hold no position
    n_splits = tp // split_size
    if mosaic:
        acc, m, den = _mosaic_call(qr, qpos, kvp, kt, vt, lengths, split_size=split_size, block_k=block_k,
                                   scale=scale, window=window, sinks=sinks,
                                   interpret=implementation == "mosaic_interpret")
        return _combine(acc, m, den, n_splits, rows, hd, (b, s, kvh, g)).astype(q.dtype)
    params = None
    if implementation == "triton":
        from jax.experimental.pallas import triton as plgpu

        params = plgpu.CompilerParams(num_warps=4, num_stages=2)
    part = jax.ShapeDtypeStruct((b, kvh, n_splits, rows_p), jnp.float32)
    acc, m, den = pl.pallas_call(
        functools.partial(_split_kernel, split_size=split_size, block_k=block_k, scale=scale, window=window,
                          sinks=sinks),
        out_shape=(jax.ShapeDtypeStruct((b, kvh, n_splits, rows_p, hdp), jnp.float32), part, part),
        grid=(b, kvh, n_splits),
        in_specs=[
            pl.BlockSpec((1,), lambda i, j, c: (i,)),
            pl.BlockSpec((None, None, rows_p, hdp), lambda i, j, c: (i, j, 0, 0)),
            pl.BlockSpec((None, rows_p), lambda i, j, c: (i, 0)),
            pl.BlockSpec((None, split_size), lambda i, j, c: (i, c)),
            pl.BlockSpec((None, None, split_size, hdp), lambda i, j, c: (i, j, c, 0)),
            pl.BlockSpec((None, None, split_size, hdp), lambda i, j, c: (i, j, c, 0)),
        ],
        out_specs=(
            pl.BlockSpec((None, None, None, rows_p, hdp), lambda i, j, c: (i, j, c, 0, 0)),
            pl.BlockSpec((None, None, None, rows_p), lambda i, j, c: (i, j, c, 0)),
            pl.BlockSpec((None, None, None, rows_p), lambda i, j, c: (i, j, c, 0)),
        ),
        interpret=is_interpret(implementation),
        compiler_params=params,
        name="decode_attention_split",
    )(lengths, qr, qpos, kvp, kt, vt)
    return _combine(acc, m, den, n_splits, rows, hd, (b, s, kvh, g)).astype(q.dtype)


def _combine(acc, m, den, n_splits: int, rows: int, hd: int, dims) -> jax.Array:
    """Fixed-order combine of the split partials: the max is exact, the sums run split 0, 1, 2, ..."""
    b, s, kvh, g = dims
    m_all = jnp.max(m, axis=2)
    num = jnp.zeros(acc.shape[:2] + acc.shape[3:], jnp.float32)
    total = jnp.zeros(m_all.shape, jnp.float32)
    for c in range(n_splits):
        w = jnp.exp(m[:, :, c] - m_all)
        num = num + acc[:, :, c] * w[..., None]
        total = total + den[:, :, c] * w
    out = jnp.where(total[..., None] > 0, num / jnp.where(total > 0, total, 1.0)[..., None], 0.0)
    out = out[:, :, :rows, :hd].reshape(b, kvh, s, g, hd).transpose(0, 2, 1, 3, 4)
    return out.reshape(b, s, kvh * g, hd)


def _mosaic_kernel(len_ref, q_ref, qpos_ref, kvpos_ref, k_ref, v_ref, acc_ref, m_ref, l_ref, *, split_size: int,
                   block_k: int, scale: float, window: int, sinks: int):
    """The split kernel in Mosaic's terms: lengths in SMEM (scalar prefetch), 2-D [rows, 1] row
    statistics (no 1-D vectors), and lane-dense [rows, 128] m / l outputs."""
    length = len_ref[pl.program_id(0)]
    start = pl.program_id(2) * split_size
    rows = q_ref.shape[0]
    lanes = m_ref.shape[-1]

    @pl.when(start >= length)
    def _empty():
        acc_ref[...] = jnp.zeros(acc_ref.shape, acc_ref.dtype)
        m_ref[...] = jnp.full(m_ref.shape, NEG_INF, m_ref.dtype)
        l_ref[...] = jnp.zeros(l_ref.shape, l_ref.dtype)

    @pl.when(start < length)
    def _compute():
        q = q_ref[...]
        q_pos = qpos_ref[...]  # [rows, 1]

        def body(j, carry):
            m, den, acc = carry  # [rows, 1], [rows, 1], [rows, hd]
            sub = pl.ds(pl.multiple_of(j * block_k, block_k), block_k)
            cols = start + j * block_k + jax.lax.broadcasted_iota(jnp.int32, (1, block_k), 1)
            vis = _visible(q_pos, cols, kvpos_ref[:, sub], length, window, sinks)
            k, v = k_ref[sub, :], v_ref[sub, :]
            s = jax.lax.dot_general(q, k, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32) * scale
            s = jnp.where(vis, s, NEG_INF)
            m_new = jnp.maximum(m, jnp.max(s, axis=-1, keepdims=True))
            p = jnp.where(vis, jnp.exp(s - m_new), 0.0)
            pv = jnp.dot(p.astype(v.dtype), v, preferred_element_type=jnp.float32)
            return m_new, jnp.exp(m - m_new) * den + jnp.sum(p, axis=-1, keepdims=True), acc * jnp.exp(m - m_new) + pv

        init = (jnp.full((rows, 1), NEG_INF, jnp.float32), jnp.zeros((rows, 1), jnp.float32),
                jnp.zeros(q.shape, jnp.float32))
        m, den, acc = jax.lax.fori_loop(0, split_size // block_k, body, init)
        acc_ref[...] = acc
        m_ref[...] = jnp.broadcast_to(m, (rows, lanes))
        l_ref[...] = jnp.broadcast_to(den, (rows, lanes))


def _mosaic_call(qr, qpos, kvp, kt, vt, lengths, *, split_size, block_k, scale, window, sinks, interpret):
    """qr [B,KVH,R,hd], qpos [B,R], kvp [B,Tp], kt/vt [B,KVH,Tp,hd] -> acc [B,KVH,C,R,hd], m/l [B,KVH,C,R]."""
    from jax.experimental.pallas import tpu as pltpu

    b, kvh, rows_p, hdp = qr.shape
    n_splits = kt.shape[2] // split_size
    lanes = 128

    def kv_block(i, j, c, lens):
        # Splits past the slot's length re-use the last live block's index, so the pipeline
        # issues no new copy for them (their compute is skipped by pl.when).
        last = jnp.maximum(lens[i] - 1, 0) // split_size
        return (i, j, jnp.minimum(c, last), 0)

    stats = jax.ShapeDtypeStruct((b, kvh, n_splits, rows_p, lanes), jnp.float32)
    acc, m, den = pl.pallas_call(
        functools.partial(_mosaic_kernel, split_size=split_size, block_k=block_k, scale=scale, window=window,
                          sinks=sinks),
        out_shape=(jax.ShapeDtypeStruct((b, kvh, n_splits, rows_p, hdp), jnp.float32), stats, stats),
        grid_spec=pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=1,
            grid=(b, kvh, n_splits),
            in_specs=[
                pl.BlockSpec((None, None, rows_p, hdp), lambda i, j, c, lens: (i, j, 0, 0)),
                pl.BlockSpec((None, rows_p, 1), lambda i, j, c, lens: (i, 0, 0)),
                pl.BlockSpec((None, 1, split_size), lambda i, j, c, lens: (i, 0, kv_block(i, j, c, lens)[2])),
                pl.BlockSpec((None, None, split_size, hdp), kv_block),
                pl.BlockSpec((None, None, split_size, hdp), kv_block),
            ],
            out_specs=(
                pl.BlockSpec((None, None, None, rows_p, hdp), lambda i, j, c, lens: (i, j, c, 0, 0)),
                pl.BlockSpec((None, None, None, rows_p, lanes), lambda i, j, c, lens: (i, j, c, 0, 0)),
                pl.BlockSpec((None, None, None, rows_p, lanes), lambda i, j, c, lens: (i, j, c, 0, 0)),
            ),
        ),
        interpret=pltpu.InterpretParams() if interpret else False,
        name="decode_attention_split_mosaic",
    )(lengths, qr, qpos[..., None], kvp[:, None, :], kt, vt)
    return acc, m[..., 0], den[..., 0]


def decode_attention(q, k_cache, v_cache, lengths, *, q_positions=None, kv_positions=None, window: int = 0,
                     sinks: int = 0, scale: float | None = None, split_size: int = 256, block_k: int = 64,
                     implementation: str | None = None) -> jax.Array:
    """Attention of q [B,S,H,hd] over cache k/v [B,T,KVH,hd] with valid `lengths` [B] -> [B,S,H,hd].

    `kv_positions` [B, T] (default: row j holds position j) is the absolute position each cache
    row holds, -1 for an empty row: a ring-buffer cache passes its row map, and the causal /
    window / sinks rules then apply to positions, not rows; `lengths` still bounds the rows read.
    `split_size` (a multiple of `block_k`) is the fixed split-K chunk; keep it constant across calls
    that must agree bitwise. `implementation`: None (by backend: GPU -> "triton", TPU -> "mosaic",
    CPU -> reference), "reference", "interpret", "triton", "mosaic", "mosaic_interpret" (the TPU
    kernel in the TPU interpreter). Inference only (no VJP).
    """
    if q.ndim != 4 or k_cache.ndim != 4 or k_cache.shape != v_cache.shape or q.shape[2] % k_cache.shape[2]:
        raise ValueError(f"decode_attention: bad shapes q {q.shape}, k {k_cache.shape}, v {v_cache.shape}")
    if split_size % block_k:
        raise ValueError(f"decode_attention: split_size={split_size} must be a multiple of block_k={block_k}")
    impl = resolve_implementation(implementation)
    scale = float(q.shape[-1] ** -0.5 if scale is None else scale)
    if impl == "reference":
        return decode_attention_reference(q, k_cache, v_cache, lengths, q_positions=q_positions,
                                          kv_positions=kv_positions, window=window, sinks=sinks, scale=scale)
    lengths = jnp.asarray(lengths, jnp.int32)
    q_pos = _default_positions(lengths, q.shape[1]) if q_positions is None else jnp.asarray(q_positions, jnp.int32)
    kv_pos = _kv_positions(kv_positions, q.shape[0], k_cache.shape[1])
    return _kernel_call(q, k_cache, v_cache, lengths, q_pos, kv_pos, window=int(window), sinks=int(sinks),
                        scale=scale, split_size=int(split_size), block_k=int(block_k), implementation=impl)
