"""Flash attention (training / prefill): blocked online-softmax forward, two-kernel backward.

Layout follows the model: q [B, S, H, hd], k/v [B, T, KVH, hd] with H a multiple of KVH (GQA).
Key j is visible from query i iff every enabled condition holds:

* segments:  q_segment_ids[b, i] == kv_segment_ids[b, j]            (packed sequences)
* causal:    kv_pos[b, j] <= q_pos[b, i]
* window:    q_pos - kv_pos < window  or  kv_pos < sinks            (window counts the query itself)
* mask:      mask[b, i, j]                                          (optional dense [B, S, T] bool)

Positions default to `arange`. This is the model's mask rule (`interaction_jax.model.attention`),
so the model passes the structure, not a dense mask: nothing of size S x T is built outside the
kernel either.

Why this structure: the grid is (batch, head, q-block); each program keeps its q block and walks
the kv blocks in a *fixed* order with an online softmax, so nothing of size S x T is materialised
and, because each row's reduction order is fixed by `block_k` alone, results do not depend on the
batch size (used by `batch_invariant.py`). A fully masked kv block is an exact no-op (alpha = 1,
p = 0), which is also why skipping blocks never changes a result. With default positions, or
given positions that the caller promises are ordered (`ordered_positions`: q and kv are the same
sequence and positions strictly increase with the index within a segment, as in a packed training
window), the loop bounds skip blocks that causality / the window rule out by index; otherwise
every block is visited.

The backward pass recomputes probabilities from the saved log-sum-exp: one kernel for dq (grid
over q blocks) and one for dk/dv (grid over kv blocks, per query head; GQA groups are summed
outside). Rows that see no key output 0 and get zero gradients.

The kernel is written against Pallas' Triton lowering (full-length K/V refs sliced with `pl.ds`),
which the interpreter also runs; TPU uses `flash_attention_mosaic` (kv-block grid axes, VMEM
scratch accumulators, lane-dense statistics) with the same mask rules and configuration.
"""

from __future__ import annotations

import dataclasses
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

# lse stored for rows with no visible key: exp(s - BIG) == 0, so they get no gradient.
_EMPTY_LSE = 1e30


@dataclasses.dataclass(frozen=True)
class _Config:
    causal: bool
    window: int
    sinks: int
    scale: float
    block_q: int
    block_k: int
    index_bounds: bool  # positions are arange: loop bounds may skip kv/q blocks by index
    has_mask: bool
    implementation: str


def _visible(q_pos, q_seg, kv_pos, kv_seg, cfg: _Config):
    """[bq, bk] visibility from column vectors q_* [bq, 1] and row vectors kv_* [1, bk]."""
    vis = q_seg == kv_seg
    if cfg.causal:
        vis &= kv_pos <= q_pos
    if cfg.window:
        vis &= (q_pos - kv_pos < cfg.window) | (kv_pos < cfg.sinks)
    return vis


def _kv_block_range(i, num_kv_blocks, cfg: _Config):
    """[lo, hi) of kv blocks that can be visible from q block i (all blocks unless index_bounds)."""
    lo, hi = 0, num_kv_blocks
    if cfg.index_bounds and cfg.causal:
        hi = jnp.minimum(num_kv_blocks, ((i + 1) * cfg.block_q + cfg.block_k - 1) // cfg.block_k)
    if cfg.index_bounds and cfg.window and not cfg.sinks:
        lo = jnp.maximum(0, (i * cfg.block_q - cfg.window + 1) // cfg.block_k)
    return lo, hi


def _q_block_range(j, num_q_blocks, cfg: _Config):
    """[lo, hi) of q blocks that can see kv block j (all blocks unless index_bounds)."""
    lo, hi = 0, num_q_blocks
    if cfg.index_bounds and cfg.causal:
        lo = (j * cfg.block_k) // cfg.block_q
    if cfg.index_bounds and cfg.window and not cfg.sinks:
        hi = jnp.minimum(num_q_blocks, ((j + 1) * cfg.block_k - 1 + cfg.window + cfg.block_q - 1) // cfg.block_q)
    return lo, hi


def _dot_t(a, b):
    """a [m, d] @ b[n, d]^T in float32."""
    return jax.lax.dot_general(a, b, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)


def _dot(a, b):
    return jnp.dot(a, b, preferred_element_type=jnp.float32)


def _dot_tn(a, b):
    """a [m, n]^T @ b [m, d] in float32."""
    return jax.lax.dot_general(a, b, (((0,), (0,)), ((), ())), preferred_element_type=jnp.float32)


def _fwd_kernel(q_ref, k_ref, v_ref, qpos_ref, qseg_ref, kvpos_ref, kvseg_ref, *refs, cfg: _Config, num_kv: int):
    if cfg.has_mask:
        mask_ref, o_ref, lse_ref = refs
    else:
        (o_ref, lse_ref), mask_ref = refs, None
    bq, bk = cfg.block_q, cfg.block_k
    q = q_ref[...]
    q_pos, q_seg = qpos_ref[...][:, None], qseg_ref[...][:, None]

    def body(j, carry):
        m, den, acc = carry
        cols = pl.ds(pl.multiple_of(j * bk, bk), bk)
        vis = _visible(q_pos, q_seg, kvpos_ref[cols][None, :], kvseg_ref[cols][None, :], cfg)
        if mask_ref is not None:
            vis &= mask_ref[:, cols] != 0
        s = jnp.where(vis, _dot_t(q, k_ref[cols, :]) * cfg.scale, NEG_INF)
        m_new = jnp.maximum(m, jnp.max(s, axis=-1))
        alpha = jnp.exp(m - m_new)
        p = jnp.where(vis, jnp.exp(s - m_new[:, None]), 0.0)
        v = v_ref[cols, :]
        return m_new, alpha * den + jnp.sum(p, axis=-1), acc * alpha[:, None] + _dot(p.astype(v.dtype), v)

    lo, hi = _kv_block_range(pl.program_id(2), num_kv, cfg)
    init = (jnp.full((bq,), NEG_INF, jnp.float32), jnp.zeros((bq,), jnp.float32), jnp.zeros(q.shape, jnp.float32))
    m, den, acc = jax.lax.fori_loop(lo, hi, body, init)
    seen = den > 0.0
    safe = jnp.where(seen, den, 1.0)
    o_ref[...] = jnp.where(seen[:, None], acc / safe[:, None], 0.0).astype(o_ref.dtype)
    lse_ref[...] = jnp.where(seen, m + jnp.log(safe), _EMPTY_LSE)


def _dq_kernel(q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, qpos_ref, qseg_ref, kvpos_ref, kvseg_ref, *refs,
               cfg: _Config, num_kv: int):
    mask_ref, dq_ref = refs if cfg.has_mask else (None, refs[0])
    bk = cfg.block_k
    q, do = q_ref[...], do_ref[...]
    lse, delta = lse_ref[...][:, None], delta_ref[...][:, None]
    q_pos, q_seg = qpos_ref[...][:, None], qseg_ref[...][:, None]

    def body(j, dq):
        cols = pl.ds(pl.multiple_of(j * bk, bk), bk)
        vis = _visible(q_pos, q_seg, kvpos_ref[cols][None, :], kvseg_ref[cols][None, :], cfg)
        if mask_ref is not None:
            vis &= mask_ref[:, cols] != 0
        k, v = k_ref[cols, :], v_ref[cols, :]
        p = jnp.where(vis, jnp.exp(_dot_t(q, k) * cfg.scale - lse), 0.0)
        ds = p * (_dot_t(do, v) - delta)
        return dq + _dot(ds.astype(k.dtype), k)

    lo, hi = _kv_block_range(pl.program_id(2), num_kv, cfg)
    dq = jax.lax.fori_loop(lo, hi, body, jnp.zeros(q.shape, jnp.float32))
    dq_ref[...] = (dq * cfg.scale).astype(dq_ref.dtype)


def _dkv_kernel(q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, qpos_ref, qseg_ref, kvpos_ref, kvseg_ref, *refs,
                cfg: _Config, num_q: int):
    mask_ref, dk_ref, dv_ref = refs if cfg.has_mask else (None, *refs)
    bq = cfg.block_q
    k, v = k_ref[...], v_ref[...]
    kv_pos, kv_seg = kvpos_ref[...][None, :], kvseg_ref[...][None, :]

    def body(i, carry):
        dk, dv = carry
        rows = pl.ds(pl.multiple_of(i * bq, bq), bq)
        vis = _visible(qpos_ref[rows][:, None], qseg_ref[rows][:, None], kv_pos, kv_seg, cfg)
        if mask_ref is not None:
            vis &= mask_ref[rows, :] != 0
        q, do = q_ref[rows, :], do_ref[rows, :]
        p = jnp.where(vis, jnp.exp(_dot_t(q, k) * cfg.scale - lse_ref[rows][:, None]), 0.0)
        ds = p * (_dot_t(do, v) - delta_ref[rows][:, None])
        return dk + _dot_tn(ds.astype(q.dtype), q), dv + _dot_tn(p.astype(do.dtype), do)

    lo, hi = _q_block_range(pl.program_id(2), num_q, cfg)
    zeros = jnp.zeros(k.shape, jnp.float32)
    dk, dv = jax.lax.fori_loop(lo, hi, body, (zeros, zeros))
    dk_ref[...] = (dk * cfg.scale).astype(dk_ref.dtype)
    dv_ref[...] = dv.astype(dv_ref.dtype)


def _compiler_params(cfg: _Config, head_dim: int):
    if cfg.implementation == "triton":
        from jax.experimental.pallas import triton as plgpu

        return plgpu.CompilerParams(num_warps=4 if head_dim <= 64 else 8, num_stages=2)
    return None


def _forward(q, k, v, q_pos, q_seg, kv_pos, kv_seg, mask, cfg: _Config):
    """q [B,H,Sp,hd], k/v [B,KVH,Tp,hd] (padded) -> o [B,H,Sp,hd], lse [B,H,Sp] f32."""
    b, h, sp, hd = q.shape
    kvh, tp = k.shape[1], k.shape[2]
    group = h // kvh
    bq = cfg.block_q
    in_specs = [
        pl.BlockSpec((None, None, bq, hd), lambda b_, h_, i: (b_, h_, i, 0)),
        pl.BlockSpec((None, None, tp, hd), lambda b_, h_, i: (b_, h_ // group, 0, 0)),
        pl.BlockSpec((None, None, tp, hd), lambda b_, h_, i: (b_, h_ // group, 0, 0)),
        pl.BlockSpec((None, bq), lambda b_, h_, i: (b_, i)),
        pl.BlockSpec((None, bq), lambda b_, h_, i: (b_, i)),
        pl.BlockSpec((None, tp), lambda b_, h_, i: (b_, 0)),
        pl.BlockSpec((None, tp), lambda b_, h_, i: (b_, 0)),
    ]
    args = [q, k, v, q_pos, q_seg, kv_pos, kv_seg]
    if cfg.has_mask:
        in_specs.append(pl.BlockSpec((None, bq, tp), lambda b_, h_, i: (b_, i, 0)))
        args.append(mask)
    return pl.pallas_call(
        functools.partial(_fwd_kernel, cfg=cfg, num_kv=tp // cfg.block_k),
        out_shape=(jax.ShapeDtypeStruct(q.shape, q.dtype), jax.ShapeDtypeStruct((b, h, sp), jnp.float32)),
        grid=(b, h, sp // bq),
        in_specs=in_specs,
        out_specs=(
            pl.BlockSpec((None, None, bq, hd), lambda b_, h_, i: (b_, h_, i, 0)),
            pl.BlockSpec((None, None, bq), lambda b_, h_, i: (b_, h_, i)),
        ),
        interpret=is_interpret(cfg.implementation),
        compiler_params=_compiler_params(cfg, hd),
        name="flash_attention_fwd",
    )(*args)


def _backward(q, k, v, o, lse, do, q_pos, q_seg, kv_pos, kv_seg, mask, cfg: _Config):
    b, h, sp, hd = q.shape
    kvh, tp = k.shape[1], k.shape[2]
    group = h // kvh
    bq, bk = cfg.block_q, cfg.block_k
    delta = jnp.sum(o.astype(jnp.float32) * do.astype(jnp.float32), axis=-1)
    interpret, params = is_interpret(cfg.implementation), _compiler_params(cfg, hd)
    args = [q, k, v, do, lse, delta, q_pos, q_seg, kv_pos, kv_seg] + ([mask] if cfg.has_mask else [])

    qblk = pl.BlockSpec((None, None, bq, hd), lambda b_, h_, i: (b_, h_, i, 0))
    kvfull = pl.BlockSpec((None, None, tp, hd), lambda b_, h_, i: (b_, h_ // group, 0, 0))
    rowblk = pl.BlockSpec((None, None, bq), lambda b_, h_, i: (b_, h_, i))
    qvec = pl.BlockSpec((None, bq), lambda b_, h_, i: (b_, i))
    kvvec = pl.BlockSpec((None, tp), lambda b_, h_, i: (b_, 0))
    dq_specs = [qblk, kvfull, kvfull, qblk, rowblk, rowblk, qvec, qvec, kvvec, kvvec]
    if cfg.has_mask:
        dq_specs.append(pl.BlockSpec((None, bq, tp), lambda b_, h_, i: (b_, i, 0)))
    dq = pl.pallas_call(
        functools.partial(_dq_kernel, cfg=cfg, num_kv=tp // bk),
        out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
        grid=(b, h, sp // bq), in_specs=dq_specs, out_specs=qblk,
        interpret=interpret, compiler_params=params, name="flash_attention_dq",
    )(*args)

    qfull = pl.BlockSpec((None, None, sp, hd), lambda b_, h_, j: (b_, h_, 0, 0))
    kvblk = pl.BlockSpec((None, None, bk, hd), lambda b_, h_, j: (b_, h_ // group, j, 0))
    rowfull = pl.BlockSpec((None, None, sp), lambda b_, h_, j: (b_, h_, 0))
    qvec = pl.BlockSpec((None, sp), lambda b_, h_, j: (b_, 0))
    kvvec = pl.BlockSpec((None, bk), lambda b_, h_, j: (b_, j))
    dkv_specs = [qfull, kvblk, kvblk, qfull, rowfull, rowfull, qvec, qvec, kvvec, kvvec]
    if cfg.has_mask:
        dkv_specs.append(pl.BlockSpec((None, sp, bk), lambda b_, h_, j: (b_, 0, j)))
    out_blk = pl.BlockSpec((None, None, bk, hd), lambda b_, h_, j: (b_, h_, j, 0))
    dk, dv = pl.pallas_call(
        functools.partial(_dkv_kernel, cfg=cfg, num_q=sp // bq),
        out_shape=(jax.ShapeDtypeStruct((b, h, tp, hd), jnp.float32),) * 2,
        grid=(b, h, tp // bk), in_specs=dkv_specs, out_specs=(out_blk, out_blk),
        interpret=interpret, compiler_params=params, name="flash_attention_dkv",
    )(*args)
    # Sum the per-query-head dk/dv over each GQA group (fixed order, f32).
    dk = dk.reshape(b, kvh, group, tp, hd).sum(axis=2).astype(k.dtype)
    dv = dv.reshape(b, kvh, group, tp, hd).sum(axis=2).astype(v.dtype)
    return dq, dk, dv


def with_flash_vjp(forward, backward):
    """The custom-VJP wrapper shared by the Triton and Mosaic builds: `forward(q, k, v, q_pos,
    q_seg, kv_pos, kv_seg, mask, cfg) -> (o, lse)` and `backward(q, k, v, o, lse, do, ..., cfg) ->
    (dq, dk, dv)`; positions, segments and the mask get no gradient."""

    @functools.partial(jax.custom_vjp, nondiff_argnums=(8,))
    def flash(q, k, v, q_pos, q_seg, kv_pos, kv_seg, mask, cfg: _Config):
        return forward(q, k, v, q_pos, q_seg, kv_pos, kv_seg, mask, cfg)[0]

    def fwd(q, k, v, q_pos, q_seg, kv_pos, kv_seg, mask, cfg: _Config):
        o, lse = forward(q, k, v, q_pos, q_seg, kv_pos, kv_seg, mask, cfg)
        return o, (q, k, v, o, lse, q_pos, q_seg, kv_pos, kv_seg, mask)

    def bwd(cfg: _Config, res, do):
        q, k, v, o, lse, q_pos, q_seg, kv_pos, kv_seg, mask = res
        dq, dk, dv = backward(q, k, v, o, lse, do, q_pos, q_seg, kv_pos, kv_seg, mask, cfg)
        return dq, dk, dv, None, None, None, None, None

    flash.defvjp(fwd, bwd)
    return flash


_flash = with_flash_vjp(_forward, _backward)


def _check_shapes(q, k, v):
    if q.ndim != 4 or k.shape != v.shape or k.ndim != 4 or q.shape[0] != k.shape[0] or q.shape[3] != k.shape[3]:
        raise ValueError(
            f"flash_attention: expected q [B,S,H,hd], k/v [B,T,KVH,hd]; got {q.shape}, {k.shape}, {v.shape}"
        )
    if q.shape[2] % k.shape[2]:
        raise ValueError(f"flash_attention: num_heads={q.shape[2]} is not a multiple of num_kv_heads={k.shape[2]}")


def _defaults(q, k, q_positions, kv_positions, q_segment_ids, kv_segment_ids):
    b, s, t = q.shape[0], q.shape[1], k.shape[1]
    ar = lambda n: jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32)[None], (b, n))
    q_pos = ar(s) if q_positions is None else jnp.asarray(q_positions, jnp.int32)
    kv_pos = ar(t) if kv_positions is None else jnp.asarray(kv_positions, jnp.int32)
    q_seg = jnp.zeros((b, s), jnp.int32) if q_segment_ids is None else jnp.asarray(q_segment_ids, jnp.int32)
    kv_seg = jnp.zeros((b, t), jnp.int32) if kv_segment_ids is None else jnp.asarray(kv_segment_ids, jnp.int32)
    return q_pos, kv_pos, q_seg, kv_seg


def flash_attention_reference(q, k, v, *, causal=True, window=0, sinks=0, q_positions=None, kv_positions=None,
                              q_segment_ids=None, kv_segment_ids=None, mask=None, scale=None) -> jax.Array:
    """Dense softmax attention with the same mask rules; softmax in float32; empty rows give 0."""
    _check_shapes(q, k, v)
    b, s, h, hd = q.shape
    kvh = k.shape[2]
    q_pos, kv_pos, q_seg, kv_seg = _defaults(q, k, q_positions, kv_positions, q_segment_ids, kv_segment_ids)
    vis = q_seg[:, :, None] == kv_seg[:, None, :]
    if causal:
        vis &= kv_pos[:, None, :] <= q_pos[:, :, None]
    if window:
        vis &= (q_pos[:, :, None] - kv_pos[:, None, :] < window) | (kv_pos[:, None, :] < sinks)
    if mask is not None:
        vis &= mask.astype(bool)
    scale = hd**-0.5 if scale is None else scale
    qg = q.reshape(b, s, kvh, h // kvh, hd)
    logits = jnp.einsum("bskgd,btkd->bkgst", qg, k, preferred_element_type=jnp.float32) * scale
    logits = jnp.where(vis[:, None, None], logits, -jnp.inf)
    mx = jnp.max(logits, axis=-1, keepdims=True)
    mx = jnp.where(jnp.isfinite(mx), mx, 0.0)
    e = jnp.where(vis[:, None, None], jnp.exp(logits - mx), 0.0)
    denom = jnp.sum(e, axis=-1, keepdims=True)
    probs = e / jnp.where(denom > 0, denom, 1.0)
    out = jnp.einsum("bkgst,btkd->bskgd", probs, v.astype(jnp.float32))
    return out.reshape(b, s, h, hd).astype(q.dtype)


def _block(requested: int, n: int) -> int:
    """Block size: the requested one, shrunk (to a power of two >= 16) for short sequences."""
    return min(requested, max(16, pl.next_power_of_2(n)))


def flash_attention(q, k, v, *, causal: bool = True, window: int = 0, sinks: int = 0, q_positions=None,
                    kv_positions=None, q_segment_ids=None, kv_segment_ids=None, mask=None, scale: float | None = None,
                    ordered_positions: bool = False, block_q: int = 128, block_k: int = 128,
                    implementation: str | None = None) -> jax.Array:
    """Attention q [B,S,H,hd], k/v [B,T,KVH,hd] -> [B,S,H,hd] (mask rules: module docstring).

    `ordered_positions` lets given positions bound the loops by index (module docstring); it
    requires S == T and is the caller's promise, not checked.

    `implementation`: None (by backend: GPU -> "triton", TPU -> "mosaic", CPU -> reference),
    "reference", "interpret", "triton", "mosaic", "mosaic_interpret" (the TPU kernel in the TPU
    interpreter). Differentiable in q, k, v for every implementation.
    """
    _check_shapes(q, k, v)
    impl = resolve_implementation(implementation)
    if impl == "reference":
        return flash_attention_reference(q, k, v, causal=causal, window=window, sinks=sinks, q_positions=q_positions,
                                         kv_positions=kv_positions, q_segment_ids=q_segment_ids,
                                         kv_segment_ids=kv_segment_ids, mask=mask, scale=scale)
    b, s, h, hd = q.shape
    t = k.shape[1]
    if impl == "triton" and jnp.dtype(q.dtype).itemsize > 2:
        # float32 tiles of 128 overflow the SM's shared memory in the backward kernels (H200: 264 KB
        # requested of 227 KB), so float32 inputs use 64-blocks on GPU.
        block_q, block_k = min(block_q, 64), min(block_k, 64)
    bq, bk = _block(block_q, s), _block(block_k, t)
    if impl in MOSAIC:  # Mosaic: key blocks span whole 128-lane vregs (the [bq, bk] scores and key rows)
        bk = max(bk, 128)
    sp, tp = round_up(s, bq), round_up(t, bk)
    if ordered_positions and s != t:
        raise ValueError(f"flash_attention: ordered_positions needs one sequence (S == T), got S={s}, T={t}")
    index_bounds = (q_positions is None and kv_positions is None) or bool(ordered_positions)
    q_pos, kv_pos, q_seg, kv_seg = _defaults(q, k, q_positions, kv_positions, q_segment_ids, kv_segment_ids)
    # Padded queries / keys get segment ids that match nothing, so they are invisible both ways.
    q_pos, q_seg = pad_axis(q_pos, 1, sp), pad_axis(q_seg, 1, sp, -2)
    kv_pos, kv_seg = pad_axis(kv_pos, 1, tp), pad_axis(kv_seg, 1, tp, -1)
    if mask is not None:
        mask = pad_axis(pad_axis(mask.astype(jnp.int8), 1, sp), 2, tp)
    cfg = _Config(causal=bool(causal), window=int(window), sinks=int(sinks),
                  scale=float(hd**-0.5 if scale is None else scale), block_q=bq, block_k=bk,
                  index_bounds=index_bounds, has_mask=mask is not None, implementation=impl)
    # Triton blocks need power-of-two sides: zero head-dim columns change no q.k and give zero
    # output columns, which are sliced off (scale above uses the true head_dim).
    hdp = round_up(hd, 128) if impl in MOSAIC else head_dim_block(hd)
    qt = pad_axis(pad_axis(q, 1, sp), 3, hdp).transpose(0, 2, 1, 3)
    kt = pad_axis(pad_axis(k, 1, tp), 3, hdp).transpose(0, 2, 1, 3)
    vt = pad_axis(pad_axis(v, 1, tp), 3, hdp).transpose(0, 2, 1, 3)
    if impl in MOSAIC:
        from pallas_kernels.flash_attention_mosaic import flash_mosaic

        o = flash_mosaic(qt, kt, vt, q_pos, q_seg, kv_pos, kv_seg, mask, cfg)
    else:
        o = _flash(qt, kt, vt, q_pos, q_seg, kv_pos, kv_seg, mask, cfg)
    return o.transpose(0, 2, 1, 3)[:, :s, :, :hd]
