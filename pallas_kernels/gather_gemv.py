"""MoE gather + GEMV for decode shapes: per token, read only its top-k experts' weights.

At decode a step has few tokens (1-64), so a grouped GEMM over all experts wastes most of its
work on tiny or empty groups; the published system instead gathers each token's routed experts and
does matrix-vector products. Two kernels, both memory-bound weight streams:

1. up:   h[t, j, :] = silu(x[t] @ W_gate[e]) * (x[t] @ W_up[e])   e = expert_ids[t, j]
         grid (token, slot j, F-tile); the expert index is read inside the kernel and used to
         index the full weight ref, so only the routed experts' tiles are touched; D is walked in
         fixed `block_d` chunks (bounded registers).
2. down: y[t, :] = sum_j weights[t, j] * (h[t, j] @ W_down[e_j])  grid (token, D-tile); the k
         routed experts are summed in the fixed order j = 0..k-1, in float32.

GEMVs are written as broadcast-multiply + sum (no MMA shape constraints at M = 1). Gradients use
the reference's VJP (this path is for inference; training uses grouped_matmul).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from pallas_kernels._common import MOSAIC, head_dim_block, is_interpret, pad_axis, resolve_implementation, round_up


def gather_gemv_reference(x, expert_ids, combine_weights, w_gate, w_up, w_down) -> jax.Array:
    """y[t] = sum_j combine_weights[t, j] * SwiGLU_{expert_ids[t, j]}(x[t]); float32 math."""
    f32 = jnp.float32
    xf = x.astype(f32)
    wg, wu, wd = (jnp.take(w, expert_ids, axis=0).astype(f32) for w in (w_gate, w_up, w_down))
    h = jax.nn.silu(jnp.einsum("td,tkdf->tkf", xf, wg)) * jnp.einsum("td,tkdf->tkf", xf, wu)
    y = jnp.einsum("tkf,tkfd,tk->td", h, wd, combine_weights.astype(f32))
    return y.astype(x.dtype)


def _up_kernel(ids_ref, x_ref, wg_ref, wu_ref, h_ref, *, block_d: int, num_d: int):
    e = ids_ref[pl.program_id(1)]

    def chunk(i, carry):  # D in fixed block_d chunks: bounded registers, fixed reduction order
        gate, up = carry
        rows = pl.ds(pl.multiple_of(i * block_d, block_d), block_d)
        x = x_ref[rows].astype(jnp.float32)[:, None]  # [bd, 1]
        gate += jnp.sum(x * wg_ref[e, rows, :].astype(jnp.float32), axis=0)  # [bf]
        up += jnp.sum(x * wu_ref[e, rows, :].astype(jnp.float32), axis=0)
        return gate, up

    zeros = jnp.zeros(h_ref.shape, jnp.float32)
    gate, up = jax.lax.fori_loop(0, num_d, chunk, (zeros, zeros))
    h_ref[...] = (jax.nn.silu(gate) * up).astype(h_ref.dtype)


def _down_kernel(ids_ref, cw_ref, h_ref, wd_ref, y_ref, *, top_k: int, block_f: int, num_f: int):
    def slot(j, acc):
        e, w = ids_ref[j], cw_ref[j]

        def chunk(i, part):
            rows = pl.ds(pl.multiple_of(i * block_f, block_f), block_f)
            h = h_ref[j, rows].astype(jnp.float32)[:, None]  # [bf, 1]
            return part + jnp.sum(h * wd_ref[e, rows, :].astype(jnp.float32), axis=0)

        return acc + w * jax.lax.fori_loop(0, num_f, chunk, jnp.zeros(y_ref.shape, jnp.float32))

    acc = jax.lax.fori_loop(0, top_k, slot, jnp.zeros(y_ref.shape, jnp.float32))
    y_ref[...] = acc.astype(y_ref.dtype)


def _kernel(x, expert_ids, combine_weights, w_gate, w_up, w_down, *, block_f, block_d, implementation):
    t, d = x.shape
    e, _, f = w_gate.shape
    k = expert_ids.shape[1]
    bf, bd = min(block_f, head_dim_block(f)), min(block_d, head_dim_block(d))
    fp, dp = round_up(f, bf), round_up(d, bd)
    # Zero padding: padded D rows add 0 to the gate/up sums; padded F columns give h = silu(0) * 0 = 0.
    xp = pad_axis(x, 1, dp)
    wg, wu = (pad_axis(pad_axis(w, 1, dp), 2, fp) for w in (w_gate, w_up))
    wd = pad_axis(pad_axis(w_down, 1, fp), 2, dp)
    ids = expert_ids.astype(jnp.int32)
    interpret = is_interpret(implementation)
    params = None
    if implementation == "triton":
        from jax.experimental.pallas import triton as plgpu

        params = plgpu.CompilerParams(num_warps=4, num_stages=2)
    h = pl.pallas_call(
        functools.partial(_up_kernel, block_d=bd, num_d=dp // bd),
        out_shape=jax.ShapeDtypeStruct((t, k, fp), jnp.float32),
        grid=(t, k, fp // bf),
        in_specs=[
            pl.BlockSpec((None, k), lambda i, j, c: (i, 0)),
            pl.BlockSpec((None, dp), lambda i, j, c: (i, 0)),
            pl.BlockSpec((e, dp, bf), lambda i, j, c: (0, 0, c)),
            pl.BlockSpec((e, dp, bf), lambda i, j, c: (0, 0, c)),
        ],
        out_specs=pl.BlockSpec((None, None, bf), lambda i, j, c: (i, j, c)),
        interpret=interpret, compiler_params=params, name="gather_gemv_up",
    )(ids, xp, wg, wu)
    y = pl.pallas_call(
        functools.partial(_down_kernel, top_k=k, block_f=bf, num_f=fp // bf),
        out_shape=jax.ShapeDtypeStruct((t, dp), x.dtype),
        grid=(t, dp // bd),
        in_specs=[
            pl.BlockSpec((None, k), lambda i, c: (i, 0)),
            pl.BlockSpec((None, k), lambda i, c: (i, 0)),
            pl.BlockSpec((None, k, fp), lambda i, c: (i, 0, 0)),
            pl.BlockSpec((e, fp, bd), lambda i, c: (0, 0, c)),
        ],
        out_specs=pl.BlockSpec((None, bd), lambda i, c: (i, c)),
        interpret=interpret, compiler_params=params, name="gather_gemv_down",
    )(ids, combine_weights.astype(jnp.float32), h, wd)
    return y[:, :d]


@functools.partial(jax.custom_vjp, nondiff_argnums=(6,))
def _gather_gemv(x, expert_ids, combine_weights, w_gate, w_up, w_down, opts):
    return _kernel(x, expert_ids, combine_weights, w_gate, w_up, w_down, **dict(opts))


def _fwd(x, expert_ids, combine_weights, w_gate, w_up, w_down, opts):
    out = _gather_gemv(x, expert_ids, combine_weights, w_gate, w_up, w_down, opts)
    return out, (x, expert_ids, combine_weights, w_gate, w_up, w_down)


def _bwd(opts, res, dy):
    x, ids, cw, wg, wu, wd = res
    _, vjp = jax.vjp(lambda x, cw, wg, wu, wd: gather_gemv_reference(x, ids, cw, wg, wu, wd), x, cw, wg, wu, wd)
    dx, dcw, dwg, dwu, dwd = vjp(dy)
    return dx, None, dcw, dwg, dwu, dwd


_gather_gemv.defvjp(_fwd, _bwd)


def gather_gemv(x, expert_ids, combine_weights, w_gate, w_up, w_down, *, block_f: int = 128, block_d: int = 128,
                implementation: str | None = None) -> jax.Array:
    """Routed SwiGLU experts for x [T, D], expert_ids/combine_weights [T, k], weights [E, D, F]/[E, F, D].

    `implementation`: None (GPU -> "triton", CPU/TPU -> reference), "reference", "interpret", "triton".
    """
    if x.ndim != 2 or expert_ids.shape != combine_weights.shape or expert_ids.shape[0] != x.shape[0]:
        raise ValueError(f"gather_gemv: bad shapes x {x.shape}, ids {expert_ids.shape}, cw {combine_weights.shape}")
    impl = resolve_implementation(implementation)
    if impl in ("reference", *MOSAIC):
        return gather_gemv_reference(x, expert_ids, combine_weights, w_gate, w_up, w_down)
    opts = (("block_f", int(block_f)), ("block_d", int(block_d)), ("implementation", impl))
    return _gather_gemv(x, expert_ids, combine_weights, w_gate, w_up, w_down, opts)
