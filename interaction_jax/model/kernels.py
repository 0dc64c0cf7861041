"""Plugs the kernels into the model's registries (imported lazily by the model on an unknown impl).

Attention (`c.model.attention_impl`), signature fn(q, k, v, mask [B, S, T] bool):
  "pallas"                  flash_attention with the dense mask; backend dispatch (CPU -> reference)
  "pallas_interpret"        the same kernel forced into Pallas interpret mode (tests / debugging)
  "pallas_batch_invariant"  fixed-block flash kernel (bitwise batch/sequence-length invariant)

MoE expert compute (`c.model.moe.impl`), signature fn(x [T, D], routing, weights):
  "pallas_gmm"   sort by expert -> grouped matmul (gate, up, down) -> unsort; differentiable
  "gather_gemv"  per-token gather of the routed experts + GEMVs (decode shapes)
  plus "*_interpret" variants of both for CPU tests.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from interaction_jax.model.attention import register_attention_impl
from interaction_jax.model.moe.experts import ExpertWeights, register_expert_impl
from interaction_jax.model.moe.router import Routing
from pallas_kernels import batch_invariant
from pallas_kernels.flash_attention import flash_attention
from pallas_kernels.gather_gemv import gather_gemv
from pallas_kernels.grouped_matmul import gmm


def make_attention_impl(implementation: str | None = None):
    def fn(q, k, v, mask):
        return flash_attention(q, k, v, causal=False, mask=mask, implementation=implementation)

    return fn


def batch_invariant_attention_impl(q, k, v, mask):
    return batch_invariant.attention(q, k, v, causal=False, mask=mask)


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


def register_all() -> None:
    """Idempotent: registers every kernel impl not registered yet."""
    attention_impls = {
        "pallas": make_attention_impl(None),
        "pallas_interpret": make_attention_impl("interpret"),
        "pallas_batch_invariant": batch_invariant_attention_impl,
    }
    for name, fn in attention_impls.items():
        try:
            register_attention_impl(name, fn)
        except ValueError:  # already registered
            pass
    expert_impls = {
        "pallas_gmm": make_gmm_experts(None),
        "pallas_gmm_interpret": make_gmm_experts("interpret"),
        "gather_gemv": make_gather_gemv_experts(None),
        "gather_gemv_interpret": make_gather_gemv_experts("interpret"),
    }
    for name, fn in expert_impls.items():
        try:
            register_expert_impl(name, fn)
        except ValueError:  # already registered
            pass


register_all()
