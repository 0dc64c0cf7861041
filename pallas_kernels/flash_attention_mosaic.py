"""Flash attention for TPU (Mosaic): the same mask rules and math as `flash_attention`, laid out for Mosaic.

Why different code from the Triton kernel: the GPU kernel keeps whole-length K/V refs and walks
them with a `fori_loop`; Mosaic wants every block to come through the grid's pipeline (DMA into
VMEM), so here the kv (or, for dk/dv, the q) blocks are the innermost *grid* axis ("arbitrary",
i.e. sequential) and the online-softmax state lives in VMEM scratch across those steps. Row
statistics are kept lane-dense ([rows, 128] broadcasts) and vectors are 2-D ([rows, 1] columns,
[1, cols] rows); no 1-D arrays. Blocks that the index bounds rule out are skipped with `pl.when`
(their DMA still happens; a clamped index map would save it). Head dims are padded to 128 lanes
by the caller.

Three kernels, as on GPU: forward (o, lse), dq (grid over kv blocks innermost), dk/dv per query
head (grid over q blocks innermost; GQA groups summed outside).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from pallas_kernels._common import NEG_INF
from pallas_kernels.flash_attention import (
    _EMPTY_LSE,
    _Config,
    _kv_block_range,
    _q_block_range,
    _visible,
    with_flash_vjp,
)

LANES = 128


def _dot_t(a, b):
    return jax.lax.dot_general(a, b, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)


def _dot_tn(a, b):
    return jax.lax.dot_general(a, b, (((0,), (0,)), ((), ())), preferred_element_type=jnp.float32)


def _block_visible(qpos_ref, qseg_ref, kvpos_ref, kvseg_ref, mask_ref, cfg: _Config):
    """[bq, bk] visibility of the current (q block, kv block) pair: the mask rules plus the dense mask."""
    vis = _visible(qpos_ref[...], qseg_ref[...], kvpos_ref[...], kvseg_ref[...], cfg)
    return vis if mask_ref is None else vis & (mask_ref[...] != 0)


def _fwd_kernel(q_ref, k_ref, v_ref, qpos_ref, qseg_ref, kvpos_ref, kvseg_ref, *refs, cfg: _Config):
    mask_ref = refs[0] if cfg.has_mask else None
    o_ref, lse_ref, m_sc, l_sc, acc_sc = refs[1:] if cfg.has_mask else refs
    i, j, nj = pl.program_id(2), pl.program_id(3), pl.num_programs(3)
    lo, hi = _kv_block_range(i, nj, cfg)

    @pl.when(j == 0)
    def _init():
        m_sc[...] = jnp.full(m_sc.shape, NEG_INF, jnp.float32)
        l_sc[...] = jnp.zeros(l_sc.shape, jnp.float32)
        acc_sc[...] = jnp.zeros(acc_sc.shape, jnp.float32)

    @pl.when((j >= lo) & (j < hi))
    def _step():
        vis = _block_visible(qpos_ref, qseg_ref, kvpos_ref, kvseg_ref, mask_ref, cfg)
        s = jnp.where(vis, _dot_t(q_ref[...], k_ref[...]) * cfg.scale, NEG_INF)
        m_prev = m_sc[...][:, :1]
        m_new = jnp.maximum(m_prev, jnp.max(s, axis=-1, keepdims=True))
        p = jnp.where(vis, jnp.exp(s - m_new), 0.0)
        alpha = jnp.exp(m_prev - m_new)
        v = v_ref[...]
        acc_sc[...] = acc_sc[...] * alpha + jnp.dot(p.astype(v.dtype), v, preferred_element_type=jnp.float32)
        l_sc[...] = jnp.broadcast_to(alpha * l_sc[...][:, :1] + jnp.sum(p, axis=-1, keepdims=True), l_sc.shape)
        m_sc[...] = jnp.broadcast_to(m_new, m_sc.shape)

    @pl.when(j == nj - 1)
    def _finish():
        den = l_sc[...][:, :1]
        seen = den > 0.0
        safe = jnp.where(seen, den, 1.0)
        o_ref[...] = jnp.where(seen, acc_sc[...] / safe, 0.0).astype(o_ref.dtype)
        lse_ref[...] = jnp.broadcast_to(jnp.where(seen, m_sc[...][:, :1] + jnp.log(safe), _EMPTY_LSE), lse_ref.shape)


def _dq_kernel(q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, qpos_ref, qseg_ref, kvpos_ref, kvseg_ref, *refs,
               cfg: _Config):
    mask_ref = refs[0] if cfg.has_mask else None
    dq_ref, dq_sc = refs[1:] if cfg.has_mask else refs
    i, j, nj = pl.program_id(2), pl.program_id(3), pl.num_programs(3)
    lo, hi = _kv_block_range(i, nj, cfg)

    @pl.when(j == 0)
    def _init():
        dq_sc[...] = jnp.zeros(dq_sc.shape, jnp.float32)

    @pl.when((j >= lo) & (j < hi))
    def _step():
        vis = _block_visible(qpos_ref, qseg_ref, kvpos_ref, kvseg_ref, mask_ref, cfg)
        k = k_ref[...]
        p = jnp.where(vis, jnp.exp(_dot_t(q_ref[...], k) * cfg.scale - lse_ref[...]), 0.0)
        ds = p * (_dot_t(do_ref[...], v_ref[...]) - delta_ref[...])
        dq_sc[...] += jnp.dot(ds.astype(k.dtype), k, preferred_element_type=jnp.float32)

    @pl.when(j == nj - 1)
    def _finish():
        dq_ref[...] = (dq_sc[...] * cfg.scale).astype(dq_ref.dtype)


def _dkv_kernel(q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, qpos_ref, qseg_ref, kvpos_ref, kvseg_ref, *refs,
                cfg: _Config):
    mask_ref = refs[0] if cfg.has_mask else None
    dk_ref, dv_ref, dk_sc, dv_sc = refs[1:] if cfg.has_mask else refs
    j, i, ni = pl.program_id(2), pl.program_id(3), pl.num_programs(3)
    lo, hi = _q_block_range(j, ni, cfg)

    @pl.when(i == 0)
    def _init():
        dk_sc[...] = jnp.zeros(dk_sc.shape, jnp.float32)
        dv_sc[...] = jnp.zeros(dv_sc.shape, jnp.float32)

    @pl.when((i >= lo) & (i < hi))
    def _step():
        vis = _block_visible(qpos_ref, qseg_ref, kvpos_ref, kvseg_ref, mask_ref, cfg)
        q, do = q_ref[...], do_ref[...]
        p = jnp.where(vis, jnp.exp(_dot_t(q, k_ref[...]) * cfg.scale - lse_ref[...]), 0.0)
        ds = p * (_dot_t(do, v_ref[...]) - delta_ref[...])
        dk_sc[...] += _dot_tn(ds.astype(q.dtype), q)
        dv_sc[...] += _dot_tn(p.astype(do.dtype), do)

    @pl.when(i == ni - 1)
    def _finish():
        dk_ref[...] = (dk_sc[...] * cfg.scale).astype(dk_ref.dtype)
        dv_ref[...] = dv_sc[...].astype(dv_ref.dtype)


def _call(kernel, grid, in_specs, out_specs, out_shape, scratch, cfg: _Config, name: str):
    from jax.experimental.pallas import tpu as pltpu

    return pl.pallas_call(
        kernel,
        grid_spec=pltpu.PrefetchScalarGridSpec(num_scalar_prefetch=0, grid=grid, in_specs=in_specs,
                                               out_specs=out_specs, scratch_shapes=scratch),
        out_shape=out_shape,
        compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel", "parallel", "parallel", "arbitrary")),
        interpret=pltpu.InterpretParams() if cfg.implementation == "mosaic_interpret" else False,
        name=name,
    )


def _specs(q_shape, kv_heads: int, cfg: _Config, kv_inner: bool):
    """BlockSpecs of q-side / kv-side blocks for a grid (b, h, outer, inner)."""
    _, h, _, hd = q_shape
    group = h // kv_heads
    bq, bk = cfg.block_q, cfg.block_k
    qi = (lambda b, h_, i, j: i) if kv_inner else (lambda b, h_, j, i: i)
    kj = (lambda b, h_, i, j: j) if kv_inner else (lambda b, h_, j, i: j)
    return dict(
        q=pl.BlockSpec((None, None, bq, hd), lambda *g: (g[0], g[1], qi(*g), 0)),
        kv=pl.BlockSpec((None, None, bk, hd), lambda *g: (g[0], g[1] // group, kj(*g), 0)),
        row=pl.BlockSpec((None, None, bq, 1), lambda *g: (g[0], g[1], qi(*g), 0)),
        qvec=pl.BlockSpec((None, bq, 1), lambda *g: (g[0], qi(*g), 0)),
        kvvec=pl.BlockSpec((None, 1, bk), lambda *g: (g[0], 0, kj(*g))),
        mask=pl.BlockSpec((None, bq, bk), lambda *g: (g[0], qi(*g), kj(*g))),
        out_kv=pl.BlockSpec((None, None, bk, hd), lambda *g: (g[0], g[1], kj(*g), 0)),
        lse=pl.BlockSpec((None, None, bq, LANES), lambda *g: (g[0], g[1], qi(*g), 0)),
    )


def _vectors(q_pos, q_seg, kv_pos, kv_seg):
    """[B, S] -> [B, S, 1] columns for queries, [B, 1, T] rows for keys (2-D blocks for Mosaic)."""
    return q_pos[:, :, None], q_seg[:, :, None], kv_pos[:, None, :], kv_seg[:, None, :]


def _forward(q, k, v, q_pos, q_seg, kv_pos, kv_seg, mask, cfg: _Config):
    b, h, sp, hd = q.shape
    kvh, tp = k.shape[1], k.shape[2]
    sp_ = _specs(q.shape, kvh, cfg, kv_inner=True)
    in_specs = [sp_["q"], sp_["kv"], sp_["kv"], sp_["qvec"], sp_["qvec"], sp_["kvvec"], sp_["kvvec"]]
    args = [q, k, v, *_vectors(q_pos, q_seg, kv_pos, kv_seg)]
    if cfg.has_mask:
        in_specs.append(sp_["mask"])
        args.append(mask)
    from jax.experimental.pallas import tpu as pltpu

    bq = cfg.block_q
    o, lse = _call(
        functools.partial(_fwd_kernel, cfg=cfg), (b, h, sp // bq, tp // cfg.block_k), in_specs,
        (sp_["q"], sp_["lse"]),
        (jax.ShapeDtypeStruct(q.shape, q.dtype), jax.ShapeDtypeStruct((b, h, sp, LANES), jnp.float32)),
        [pltpu.VMEM((bq, LANES), jnp.float32), pltpu.VMEM((bq, LANES), jnp.float32), pltpu.VMEM((bq, hd), jnp.float32)],
        cfg, "flash_attention_fwd_mosaic",
    )(*args)
    return o, lse[..., :1]


def _backward(q, k, v, o, lse, do, q_pos, q_seg, kv_pos, kv_seg, mask, cfg: _Config):
    from jax.experimental.pallas import tpu as pltpu

    b, h, sp, hd = q.shape
    kvh, tp = k.shape[1], k.shape[2]
    group = h // kvh
    bq, bk = cfg.block_q, cfg.block_k
    delta = jnp.sum(o.astype(jnp.float32) * do.astype(jnp.float32), axis=-1, keepdims=True)
    args = [q, k, v, do, lse, delta, *_vectors(q_pos, q_seg, kv_pos, kv_seg)] + ([mask] if cfg.has_mask else [])

    s = _specs(q.shape, kvh, cfg, kv_inner=True)
    specs = [s["q"], s["kv"], s["kv"], s["q"], s["row"], s["row"], s["qvec"], s["qvec"], s["kvvec"], s["kvvec"]]
    dq = _call(
        functools.partial(_dq_kernel, cfg=cfg), (b, h, sp // bq, tp // bk),
        specs + ([s["mask"]] if cfg.has_mask else []), s["q"], jax.ShapeDtypeStruct(q.shape, q.dtype),
        [pltpu.VMEM((bq, hd), jnp.float32)], cfg, "flash_attention_dq_mosaic",
    )(*args)

    s = _specs(q.shape, kvh, cfg, kv_inner=False)
    specs = [s["q"], s["kv"], s["kv"], s["q"], s["row"], s["row"], s["qvec"], s["qvec"], s["kvvec"], s["kvvec"]]
    per_head = jax.ShapeDtypeStruct((b, h, tp, hd), jnp.float32)
    dk, dv = _call(
        functools.partial(_dkv_kernel, cfg=cfg), (b, h, tp // bk, sp // bq),
        specs + ([s["mask"]] if cfg.has_mask else []), (s["out_kv"], s["out_kv"]), (per_head, per_head),
        [pltpu.VMEM((bk, hd), jnp.float32), pltpu.VMEM((bk, hd), jnp.float32)], cfg, "flash_attention_dkv_mosaic",
    )(*args)
    dk = dk.reshape(b, kvh, group, tp, hd).sum(axis=2).astype(k.dtype)
    dv = dv.reshape(b, kvh, group, tp, hd).sum(axis=2).astype(v.dtype)
    return dq, dk, dv


# q [B,H,Sp,hd], k/v [B,KVH,Tp,hd] padded to the blocks (hd to 128 lanes) -> o [B,H,Sp,hd].
flash_mosaic = with_flash_vjp(_forward, _backward)
