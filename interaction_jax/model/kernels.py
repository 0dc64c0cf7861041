"""The model side of the Pallas kernels: registers the ones it uses into the model's registries.

`pallas_kernels/` is a standalone library (it imports nothing from `interaction_jax`); this
module, imported lazily by the model on an unknown "pallas..." name, plugs its kernels in.

Attention (`c.model.attention_impl`), signature fn(q, k, v, mask: AttentionMask):
  "pallas"                  flash_attention given the mask's structure (causal, window, sinks,
                            positions, segment ids; `kv_valid` as a segment no query has), so no
                            [B, S, T] mask is built and, for a training window (`ordered`), blocks
                            above the diagonal / outside the window are skipped; a caller's dense
                            mask goes in as is; backend dispatch (CPU -> reference)
  "pallas_interpret"        the same kernel forced into Pallas interpret mode (tests / debugging)
  "pallas_batch_invariant"  fixed-block flash kernel (bitwise batch/sequence-length invariant)

MoE expert compute (`c.model.moe.impl`), signature fn(x [T, D], routing, weights):
  "pallas_gmm"   sort by expert -> grouped matmul (gate, up, down) -> unsort; differentiable
  "gather_gemv"  per-token gather of the routed experts + GEMVs (decode shapes)
  plus "*_interpret" variants of both for CPU tests.

Cache attention (`inference.decode_attention`, `kv_cache.py`), fn(q, k, v, layer, view, rows, impl):
  "pallas"            split-K decode kernel over the layer's rows with their row -> position map
                      (GPU: Triton; CPU: its dense reference), splits past a slot's last used row
                      (all of an idle slot's) skipped
  "pallas_interpret"  the same kernel in Pallas interpret mode (CPU tests)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from interaction_jax.model.attention import AttentionMask, register_attention_impl
from interaction_jax.model.cache_attention import rows_in_use
from interaction_jax.model.kv_cache import CacheView, RowMap, layer_rows, register_cache_attention
from interaction_jax.model.moe.experts import ExpertWeights, register_expert_impl
from interaction_jax.model.moe.router import Routing
from pallas_kernels import batch_invariant
from pallas_kernels.decode_attention import decode_attention
from pallas_kernels.flash_attention import flash_attention
from pallas_kernels.gather_gemv import gather_gemv
from pallas_kernels.grouped_matmul import gmm


def flash_mask_kwargs(mask: AttentionMask) -> dict:
    """The kernel's mask arguments for the model's `AttentionMask` (module docstring)."""
    if mask.dense_mask is not None:
        return {"causal": False, "mask": mask.dense_mask}
    q_seg, kv_seg = mask.q_segment_ids, mask.kv_segment_ids
    if mask.kv_valid is not None:  # an unwritten key joins segment -1, which no query (ids >= 0) has
        q_seg = jnp.zeros(mask.q_positions.shape, jnp.int32) if q_seg is None else q_seg
        kv_seg = jnp.zeros(mask.kv_positions.shape, jnp.int32) if kv_seg is None else kv_seg
        kv_seg = jnp.where(mask.kv_valid, kv_seg, -1)
    return {"causal": True, "window": mask.window, "sinks": mask.sinks, "q_positions": mask.q_positions,
            "kv_positions": mask.kv_positions, "q_segment_ids": q_seg, "kv_segment_ids": kv_seg,
            "ordered_positions": mask.ordered}


def make_attention_impl(implementation: str | None = None):
    def fn(q, k, v, mask: AttentionMask):
        return flash_attention(q, k, v, implementation=implementation, **flash_mask_kwargs(mask))

    return fn


def batch_invariant_attention_impl(q, k, v, mask: AttentionMask):
    return batch_invariant.attention(q, k, v, **flash_mask_kwargs(mask))


def make_gmm_experts(implementation: str | None = None):
    """Dropless sort -> Pallas grouped matmul -> unsort, combined in float32."""

    def fn(x: jax.Array, routing: Routing, weights: ExpertWeights) -> jax.Array:
        num_tokens, top_k = routing.expert_ids.shape
        num_experts = weights.w_gate.shape[0]
        flat = routing.expert_ids.reshape(-1)
        order = jnp.argsort(flat, stable=True)
        xs = jnp.take(x, order // top_k, axis=0)
        sizes = jnp.bincount(flat, length=num_experts).astype(jnp.int32)
        mm = lambda a, w: gmm(a, w.astype(x.dtype), sizes, implementation=implementation)
        h = jax.nn.silu(mm(xs, weights.w_gate)) * mm(xs, weights.w_up)
        out = mm(h, weights.w_down)
        slot_out = jnp.take(out, jnp.argsort(order), axis=0).reshape(num_tokens, top_k, -1)
        y = jnp.einsum("tkd,tk->td", slot_out.astype(jnp.float32), routing.weights.astype(jnp.float32))
        return y.astype(x.dtype)

    return fn


def make_gather_gemv_experts(implementation: str | None = None):
    def fn(x: jax.Array, routing: Routing, weights: ExpertWeights) -> jax.Array:
        return gather_gemv(x, routing.expert_ids, routing.weights, weights.w_gate, weights.w_up, weights.w_down,
                           implementation=implementation)

    return fn


def make_decode_strategy(implementation: str | None = None):
    """Cache attention by the split-K decode kernel, reading rows up to each slot's last used one."""

    def fn(q, k, v, layer, view: CacheView, rows: RowMap, impl: str) -> jax.Array:
        del impl
        used = jnp.where(jnp.any(view.q_valid, axis=1), rows_in_use(view.kv_positions), 0)
        hd = q.shape[-1]
        return decode_attention(q, layer_rows(k, layer, hd).astype(q.dtype), layer_rows(v, layer, hd).astype(q.dtype),
                                used,
                                q_positions=view.q_positions, kv_positions=view.kv_positions, window=rows.window,
                                sinks=rows.sinks, implementation=implementation)

    return fn


def _register(register, impls: dict) -> None:
    for name, fn in impls.items():
        try:
            register(name, fn)
        except ValueError:  # already registered
            pass


def register_all() -> None:
    """Idempotent: registers every kernel impl not registered yet."""
    _register(register_attention_impl, {
        "pallas": make_attention_impl(None),
        "pallas_interpret": make_attention_impl("interpret"),
        "pallas_batch_invariant": batch_invariant_attention_impl,
    })
    _register(register_expert_impl, {
        "pallas_gmm": make_gmm_experts(None),
        "pallas_gmm_interpret": make_gmm_experts("interpret"),
        "gather_gemv": make_gather_gemv_experts(None),
        "gather_gemv_interpret": make_gather_gemv_experts("interpret"),
    })
    _register(register_cache_attention, {
        "pallas": make_decode_strategy(None),
        "pallas_interpret": make_decode_strategy("interpret"),
    })


register_all()
