"""Expert compute backends: apply each token's routed SwiGLU experts and combine them.

Every backend has the signature `fn(x [T, D], routing, weights) -> y [T, D]` and is looked up by
name (`c.model.moe.impl`) in a registry, so kernels (e.g. "pallas_gmm", "gather_gemv") register
themselves with `register_expert_impl` without the layer changing.

- "ragged_dot": dropless grouped GEMM. Token-slots are sorted by expert, group sizes come from a
  bincount, `jax.lax.ragged_dot` runs gate/up/down, then slots are unsorted and combined. The
  portable training/prefill reference.
- "gather": gathers each token-slot's expert matrices (`w[expert_ids]`) and does per-token
  matvecs. The decode path: at a handful of tokens it touches only the routed experts, whereas
  ragged_dot on CPU computes densely over all experts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from interaction_jax.model.moe.router import Routing


class ExpertWeights(NamedTuple):
    """SwiGLU expert weights: y = (silu(x @ w_gate[e]) * (x @ w_up[e])) @ w_down[e]."""

    w_gate: jax.Array  # [E, D, F]
    w_up: jax.Array  # [E, D, F]
    w_down: jax.Array  # [E, F, D]


ExpertFn = Callable[[jax.Array, Routing, ExpertWeights], jax.Array]
_REGISTRY: dict[str, ExpertFn] = {}


def register_expert_impl(name: str, fn: ExpertFn, *, overwrite: bool = False) -> None:
    """Makes `fn` selectable as `c.model.moe.impl = name`."""
    if name in _REGISTRY and not overwrite:
        raise ValueError(f"expert impl {name!r} is already registered")
    _REGISTRY[name] = fn


def available_impls() -> tuple[str, ...]:
    return tuple(sorted(_REGISTRY))


def expert_compute(
    x: jax.Array, routing: Routing, weights: ExpertWeights, impl: str = "ragged_dot"
) -> jax.Array:
    """Routed-expert output [T, D] for tokens `x` [T, D] with the backend named `impl`."""
    if impl not in _REGISTRY and impl.startswith(("pallas", "gather_gemv")):
        import pallas_kernels.register  # noqa: F401  (registers the kernel impls; lazy: no Pallas import otherwise)
    if impl not in _REGISTRY:
        raise ValueError(f"unknown MoE impl {impl!r}; available: {available_impls()}")
    return _REGISTRY[impl](x, routing, weights)


def _combine(slot_out: jax.Array, routing: Routing, dtype) -> jax.Array:
    """sum_k weights[t, k] * slot_out[t, k, :] in float32, cast back to the activation dtype."""
    y = jnp.einsum("tkd,tk->td", slot_out.astype(jnp.float32), routing.weights.astype(jnp.float32))
    return y.astype(dtype)


def ragged_dot_experts(x: jax.Array, routing: Routing, weights: ExpertWeights) -> jax.Array:
    """Dropless sort -> ragged_dot -> unsort backend."""
    num_tokens, top_k = routing.expert_ids.shape
    num_experts = weights.w_gate.shape[0]
    flat_ids = routing.expert_ids.reshape(-1)  # slot s = t * k + j
    order = jnp.argsort(flat_ids, stable=True)
    xs = jnp.take(x, order // top_k, axis=0)  # [T*k, D], grouped by expert
    group_sizes = jnp.bincount(flat_ids, length=num_experts).astype(jnp.int32)
    gate = jax.lax.ragged_dot(xs, weights.w_gate.astype(x.dtype), group_sizes)
    up = jax.lax.ragged_dot(xs, weights.w_up.astype(x.dtype), group_sizes)
    h = jax.nn.silu(gate) * up
    out = jax.lax.ragged_dot(h, weights.w_down.astype(x.dtype), group_sizes)  # [T*k, D]
    inverse = jnp.argsort(order)  # position of each original slot in the sorted order
    slot_out = jnp.take(out, inverse, axis=0).reshape(num_tokens, top_k, -1)
    return _combine(slot_out, routing, x.dtype)


def gather_experts(x: jax.Array, routing: Routing, weights: ExpertWeights) -> jax.Array:
    """Per-token gather of the routed experts' matrices + matvecs (decode path)."""
    ids = routing.expert_ids
    w_gate = jnp.take(weights.w_gate, ids, axis=0).astype(x.dtype)  # [T, k, D, F]
    w_up = jnp.take(weights.w_up, ids, axis=0).astype(x.dtype)
    w_down = jnp.take(weights.w_down, ids, axis=0).astype(x.dtype)  # [T, k, F, D]
    h = jax.nn.silu(jnp.einsum("td,tkdf->tkf", x, w_gate)) * jnp.einsum("td,tkdf->tkf", x, w_up)
    slot_out = jnp.einsum("tkf,tkfd->tkd", h, w_down)
    return _combine(slot_out, routing, x.dtype)


def batched_swiglu(xb: jax.Array, weights: ExpertWeights) -> jax.Array:
    """Dense per-expert SwiGLU over a capacity buffer xb [E, C, D] -> [E, C, D] (EP local compute)."""
    dt = xb.dtype
    gate = jnp.einsum("ecd,edf->ecf", xb, weights.w_gate.astype(dt))
    up = jnp.einsum("ecd,edf->ecf", xb, weights.w_up.astype(dt))
    return jnp.einsum("ecf,efd->ecd", jax.nn.silu(gate) * up, weights.w_down.astype(dt))


register_expert_impl("ragged_dot", ragged_dot_experts)
register_expert_impl("gather", gather_experts)
