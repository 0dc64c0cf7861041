"""MoE grouped matmul (training / prefill): rows sorted by expert, one weight matrix per group.

gmm(lhs [M, K], rhs [G, K, N], group_sizes [G]) -> [M, N]: rows [off[g], off[g+1]) of lhs use rhs[g]
(off = exclusive cumsum of group_sizes); rows past sum(group_sizes) give 0, as jax.lax.ragged_dot.

Forward kernel: grid (m-tile, n-tile). A row tile can straddle group boundaries, so each program
loops over exactly the groups that intersect its rows ([tile_lo, tile_hi), computed outside with
searchsorted), masks the rows of each, and accumulates over K in `block_k` chunks. Empty groups
intersect no tile and cost nothing.

Gradients (custom VJP): d_lhs is the same kernel with rhs transposed; d_rhs is the "transposed"
grouped matmul tgmm(lhs, d_out) -> [G, K, N], a grid over (group, k-tile, n-tile) that walks the
row tiles of its group (an empty group writes zeros). group_sizes gets no gradient.

Written for Pallas' Triton lowering and the interpreter (dynamic expert index into a full rhs ref);
on TPU the dispatcher uses `grouped_matmul_mosaic` (a visit list by scalar prefetch).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from pallas_kernels._common import MOSAIC, is_interpret, pad_axis, resolve_implementation, round_up


@dataclasses.dataclass(frozen=True)
class _Config:
    block_m: int
    block_n: int
    block_k: int
    implementation: str


def gmm_reference(lhs: jax.Array, rhs: jax.Array, group_sizes: jax.Array) -> jax.Array:
    """jax.lax.ragged_dot (the portable XLA grouped matmul), float32 accumulation."""
    out = jax.lax.ragged_dot(lhs, rhs, group_sizes.astype(jnp.int32), preferred_element_type=jnp.float32)
    return out.astype(lhs.dtype)


def _params(cfg: _Config):
    if cfg.implementation == "triton":
        from jax.experimental.pallas import triton as plgpu

        return plgpu.CompilerParams(num_warps=4, num_stages=2)
    return None


def _gmm_kernel(lo_ref, hi_ref, offs_ref, lhs_ref, rhs_ref, out_ref, *, cfg: _Config, num_k: int):
    bm, bk = cfg.block_m, cfg.block_k
    rows = pl.program_id(0) * bm + jax.lax.broadcasted_iota(jnp.int32, (bm, 1), 0)

    def group(g, acc):
        in_group = (rows >= offs_ref[g]) & (rows < offs_ref[g + 1])

        def k_step(kk, part):
            cols = pl.ds(pl.multiple_of(kk * bk, bk), bk)
            return part + jnp.dot(lhs_ref[:, cols], rhs_ref[g, cols, :], preferred_element_type=jnp.float32)

        part = jax.lax.fori_loop(0, num_k, k_step, jnp.zeros(acc.shape, jnp.float32))
        return acc + jnp.where(in_group, part, 0.0)

    acc = jax.lax.fori_loop(lo_ref[0], hi_ref[0], group, jnp.zeros(out_ref.shape, jnp.float32))
    out_ref[...] = acc.astype(out_ref.dtype)


def _tgmm_kernel(offs_ref, lhs_ref, dout_ref, out_ref, *, cfg: _Config):
    bm = cfg.block_m
    g = pl.program_id(0)
    start, end = offs_ref[g], offs_ref[g + 1]

    def tile(t, acc):
        rows = t * bm + jax.lax.broadcasted_iota(jnp.int32, (bm, 1), 0)
        sl = pl.ds(pl.multiple_of(t * bm, bm), bm)
        x = jnp.where((rows >= start) & (rows < end), lhs_ref[sl, :], 0)
        return acc + jax.lax.dot_general(x, dout_ref[sl, :], (((0,), (0,)), ((), ())),
                                         preferred_element_type=jnp.float32)

    acc = jax.lax.fori_loop(start // bm, (end + bm - 1) // bm, tile, jnp.zeros(out_ref.shape, jnp.float32))
    out_ref[...] = acc.astype(out_ref.dtype)


def _offsets(group_sizes):
    return jnp.concatenate([jnp.zeros((1,), jnp.int32), jnp.cumsum(group_sizes.astype(jnp.int32))])


def _gmm_padded(lhs, rhs, group_sizes, cfg: _Config):
    """lhs [Mp, Kp], rhs [G, Kp, Np] already padded to the blocks."""
    mp, kp = lhs.shape
    g, _, np_ = rhs.shape
    bm, bn = cfg.block_m, cfg.block_n
    offs = _offsets(group_sizes)
    tile_start = jnp.arange(mp // bm, dtype=jnp.int32) * bm
    # Groups intersecting tile i: those ending after its first row and starting before its end
    # (empty groups intersect nothing).
    lo = jnp.searchsorted(offs[1:], tile_start, side="right").astype(jnp.int32)
    hi = jnp.searchsorted(offs[:-1], tile_start + bm, side="left").astype(jnp.int32)
    hi = jnp.maximum(lo, hi)
    return pl.pallas_call(
        functools.partial(_gmm_kernel, cfg=cfg, num_k=kp // cfg.block_k),
        out_shape=jax.ShapeDtypeStruct((mp, np_), lhs.dtype),
        grid=(mp // bm, np_ // bn),
        in_specs=[
            pl.BlockSpec((1,), lambda i, j: (i,)),
            pl.BlockSpec((1,), lambda i, j: (i,)),
            pl.BlockSpec((g + 1,), lambda i, j: (0,)),
            pl.BlockSpec((bm, kp), lambda i, j: (i, 0)),
            pl.BlockSpec((g, kp, bn), lambda i, j: (0, 0, j)),
        ],
        out_specs=pl.BlockSpec((bm, bn), lambda i, j: (i, j)),
        interpret=is_interpret(cfg.implementation),
        compiler_params=_params(cfg),
        name="grouped_matmul",
    )(lo, hi, offs, lhs, rhs)


def _tgmm_padded(lhs, dout, group_sizes, cfg: _Config):
    """lhs [Mp, Kp], dout [Mp, Np] -> [G, Kp, Np]: per-group lhs^T @ dout."""
    mp, kp = lhs.shape
    np_ = dout.shape[1]
    g = group_sizes.shape[0]
    bk, bn = cfg.block_k, cfg.block_n
    return pl.pallas_call(
        functools.partial(_tgmm_kernel, cfg=cfg),
        out_shape=jax.ShapeDtypeStruct((g, kp, np_), jnp.float32),
        grid=(g, kp // bk, np_ // bn),
        in_specs=[
            pl.BlockSpec((g + 1,), lambda e, a, b: (0,)),
            pl.BlockSpec((mp, bk), lambda e, a, b: (0, a)),
            pl.BlockSpec((mp, bn), lambda e, a, b: (0, b)),
        ],
        out_specs=pl.BlockSpec((None, bk, bn), lambda e, a, b: (e, a, b)),
        interpret=is_interpret(cfg.implementation),
        compiler_params=_params(cfg),
        name="grouped_matmul_t",
    )(_offsets(group_sizes), lhs, dout)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _gmm(lhs, rhs, group_sizes, cfg: _Config):
    return _gmm_padded(lhs, rhs, group_sizes, cfg)


def _gmm_fwd(lhs, rhs, group_sizes, cfg: _Config):
    return _gmm_padded(lhs, rhs, group_sizes, cfg), (lhs, rhs, group_sizes)


def _gmm_bwd(cfg: _Config, res, dout):
    lhs, rhs, group_sizes = res
    # d_lhs: dout [Mp, Np] against rhs^T [G, Np, Kp] (Np, Kp are both multiples of bn and bk
    # because _pad uses a common multiple for them).
    d_lhs = _gmm_padded(dout, rhs.transpose(0, 2, 1), group_sizes, cfg)
    d_rhs = _tgmm_padded(lhs, dout, group_sizes, cfg).astype(rhs.dtype)
    return d_lhs, d_rhs, None


_gmm.defvjp(_gmm_fwd, _gmm_bwd)


def _block(requested: int, n: int) -> int:
    return min(requested, max(16, pl.next_power_of_2(n)))


def gmm(lhs: jax.Array, rhs: jax.Array, group_sizes: jax.Array, *, block_m: int = 64, block_n: int = 64,
        block_k: int = 64, implementation: str | None = None) -> jax.Array:
    """Grouped matmul lhs [M, K] x rhs [G, K, N] by `group_sizes` [G] -> [M, N] (differentiable).

    `implementation`: None (GPU -> "triton", TPU -> "mosaic", CPU -> reference), "reference",
    "interpret", "triton", "mosaic", "mosaic_interpret" (the TPU kernel in the TPU interpreter).
    """
    if lhs.ndim != 2 or rhs.ndim != 3 or lhs.shape[1] != rhs.shape[1] or group_sizes.shape != rhs.shape[:1]:
        raise ValueError(f"gmm: expected lhs [M,K], rhs [G,K,N], group_sizes [G]; got {lhs.shape}, {rhs.shape}, "
                         f"{group_sizes.shape}")
    impl = resolve_implementation(implementation)
    if impl == "reference":
        return gmm_reference(lhs, rhs, group_sizes)
    if impl in MOSAIC:  # TPU: its own kernel (visit list by scalar prefetch); 128-lane blocks
        from pallas_kernels.grouped_matmul_mosaic import gmm_mosaic

        return gmm_mosaic(lhs, rhs, group_sizes, block_m=round_up(block_m, 8), block_n=max(block_n, 128),
                          block_k=max(block_k, 128), interpret=impl == "mosaic_interpret")
    m, k = lhs.shape
    n = rhs.shape[2]
    bm = _block(block_m, m)
    # K and N swap roles in the backward pass, so pad both to a multiple of both blocks.
    bn, bk = _block(block_n, n), _block(block_k, k)
    common = max(bn, bk)
    kp, np_ = round_up(k, common), round_up(n, common)
    cfg = _Config(block_m=bm, block_n=bn, block_k=bk, implementation=impl)
    lhs_p = pad_axis(pad_axis(lhs, 0, round_up(m, bm)), 1, kp)
    rhs_p = pad_axis(pad_axis(rhs, 1, kp), 2, np_)
    return _gmm(lhs_p, rhs_p, group_sizes.astype(jnp.int32), cfg)[:m, :n]
