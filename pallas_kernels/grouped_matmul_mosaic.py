"""Grouped matmul for TPU (Mosaic): a flat list of (row tile, group) visits in scalar memory.

Same contract as `grouped_matmul.gmm` (rows sorted by group, rows past sum(group_sizes) give 0).
Why different code from the Triton kernel: Mosaic pipelines blocks whose indices come from the
grid, so a program cannot loop over the groups of its row tile and index a full weight ref the
way the GPU kernel does. Instead the wrapper builds, in JAX, the list of every (row tile, group)
pair that intersects (each row tile at least once, in row-tile order) and passes it by scalar
prefetch; the grid is (n tile, visit, k tile) and the index maps read the list, so each step's
lhs / rhs / output blocks are DMA'd by the pipeline. Consecutive visits of the same row tile keep
an f32 VMEM accumulator: zeroed at the tile's first visit, written at its last. Each visit masks
the rows outside its group, so a row tile straddling groups sums exactly one group per row.
Padding visits (the list has a static length) repeat the last tile with every row masked.

Gradients: d_lhs is the same kernel on rhs^T; d_rhs [G, K, N] uses the reference's VJP (a Mosaic
transposed grouped matmul is not written yet).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from pallas_kernels._common import pad_axis, round_up


def visit_list(group_sizes: jax.Array, num_tiles: int, block_m: int):
    """(tile ids, group ids, valid) [V] with V = num_tiles + G -- the (row tile, group) pairs in tile
    order -- and the group offsets [G + 1]."""
    g = group_sizes.shape[0]
    offs = jnp.concatenate([jnp.zeros((1,), jnp.int32), jnp.cumsum(group_sizes.astype(jnp.int32))])
    tile_start = jnp.arange(num_tiles, dtype=jnp.int32) * block_m
    lo = jnp.searchsorted(offs[1:], tile_start, side="right").astype(jnp.int32)  # first group ending after
    hi = jnp.searchsorted(offs[:-1], tile_start + block_m, side="left").astype(jnp.int32)
    count = jnp.maximum(hi - lo, 1)  # a tile with no rows is still visited once (it must write zeros)
    first = jnp.concatenate([jnp.zeros((1,), jnp.int32), jnp.cumsum(count)[:-1]])
    v = jnp.arange(num_tiles + g, dtype=jnp.int32)
    tile = jnp.clip(jnp.searchsorted(first, v, side="right").astype(jnp.int32) - 1, 0, num_tiles - 1)
    valid = v < jnp.sum(count)
    group = jnp.clip(lo[tile] + v - first[tile], 0, g - 1)
    return jnp.where(valid, tile, num_tiles - 1), jnp.where(valid, group, g - 1), valid.astype(jnp.int32), offs


def _kernel(tile_ref, group_ref, valid_ref, offs_ref, lhs_ref, rhs_ref, out_ref, acc_ref, *, block_m: int):
    v, kk = pl.program_id(1), pl.program_id(2)
    nv, nk = pl.num_programs(1), pl.num_programs(2)
    tile, group = tile_ref[v], group_ref[v]
    first_visit = (v == 0) | (tile != tile_ref[jnp.maximum(v - 1, 0)])
    last_visit = (v == nv - 1) | (tile != tile_ref[jnp.minimum(v + 1, nv - 1)])

    @pl.when(first_visit & (kk == 0))
    def _zero():
        acc_ref[...] = jnp.zeros(acc_ref.shape, acc_ref.dtype)

    rows = tile * block_m + jax.lax.broadcasted_iota(jnp.int32, (block_m, 1), 0)
    mine = (rows >= offs_ref[group]) & (rows < offs_ref[group + 1]) & (valid_ref[v] != 0)
    lhs = jnp.where(mine, lhs_ref[...], jnp.zeros((), lhs_ref.dtype))
    acc_ref[...] += jnp.dot(lhs, rhs_ref[...], preferred_element_type=jnp.float32)

    @pl.when(last_visit & (kk == nk - 1))
    def _store():
        out_ref[...] = acc_ref[...].astype(out_ref.dtype)


def gmm_mosaic_padded(lhs, rhs, group_sizes, *, block_m: int, block_n: int, block_k: int, interpret: bool):
    """lhs [Mp, Kp], rhs [G, Kp, Np], every dim a multiple of its block -> [Mp, Np]."""
    from jax.experimental.pallas import tpu as pltpu

    mp, kp = lhs.shape
    np_ = rhs.shape[2]
    tiles, groups, valid, offs = visit_list(group_sizes, mp // block_m, block_m)
    return pl.pallas_call(
        functools.partial(_kernel, block_m=block_m),
        out_shape=jax.ShapeDtypeStruct((mp, np_), lhs.dtype),
        grid_spec=pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=4,
            grid=(np_ // block_n, tiles.shape[0], kp // block_k),
            in_specs=[
                pl.BlockSpec((block_m, block_k), lambda n, v, k, t, g, ok, o: (t[v], k)),
                pl.BlockSpec((None, block_k, block_n), lambda n, v, k, t, g, ok, o: (g[v], k, n)),
            ],
            out_specs=pl.BlockSpec((block_m, block_n), lambda n, v, k, t, g, ok, o: (t[v], n)),
            scratch_shapes=[pltpu.VMEM((block_m, block_n), jnp.float32)],
        ),
        compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel", "arbitrary", "arbitrary")),
        interpret=pltpu.InterpretParams() if interpret else False,
        name="grouped_matmul_mosaic",
    )(tiles, groups, valid, offs, lhs, rhs)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _gmm(lhs, rhs, group_sizes, opts):
    return gmm_mosaic_padded(lhs, rhs, group_sizes, **dict(opts))


def _fwd(lhs, rhs, group_sizes, opts):
    return _gmm(lhs, rhs, group_sizes, opts), (lhs, rhs, group_sizes)


def _bwd(opts, res, dout):
    lhs, rhs, group_sizes = res
    o = dict(opts)
    o["block_n"], o["block_k"] = o["block_k"], o["block_n"]  # K and N swap roles for d_lhs
    d_lhs = gmm_mosaic_padded(dout, rhs.transpose(0, 2, 1), group_sizes, **o)
    _, vjp = jax.vjp(lambda r: jax.lax.ragged_dot(lhs, r, group_sizes, preferred_element_type=jnp.float32), rhs)
    (d_rhs,) = vjp(dout.astype(jnp.float32))
    return d_lhs, d_rhs.astype(rhs.dtype), None


_gmm.defvjp(_fwd, _bwd)


def gmm_mosaic(lhs, rhs, group_sizes, *, block_m: int = 128, block_n: int = 128, block_k: int = 128,
               interpret: bool = False) -> jax.Array:
    """Grouped matmul lhs [M, K] x rhs [G, K, N] by `group_sizes` [G] on TPU; differentiable.

    Blocks default to 128 (Mosaic tiles: multiples of 8 rows x 128 lanes). `interpret` runs it in
    the TPU interpreter (CPU tests).
    """
    m, k = lhs.shape
    n = rhs.shape[2]
    common = max(block_n, block_k)  # K and N swap roles in the backward pass
    mp, kp, np_ = round_up(m, block_m), round_up(k, common), round_up(n, common)
    opts = (("block_m", block_m), ("block_n", block_n), ("block_k", block_k), ("interpret", bool(interpret)))
    lhs_p = pad_axis(pad_axis(lhs, 0, mp), 1, kp)
    rhs_p = pad_axis(pad_axis(rhs, 1, kp), 2, np_)
    return _gmm(lhs_p, rhs_p, group_sizes.astype(jnp.int32), opts)[:m, :n]
