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
- "dense": every expert on every token, weighted by the routing (zeros off the routed experts);
  the cheapest static-shape form on CPU for a short prefill block.
- "auto": "gather" when T x k < E, else "dense" on CPU and "ragged_dot" elsewhere (the choice is
  static: T is known at trace time). Streaming defaults to it (`inference.moe_impl`).
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


def check_expert_impl(impl: str) -> str:
    """`impl` if it names a registered backend (registering the Pallas ones on first use), else a clear error."""
    if impl not in _REGISTRY and impl.startswith(("pallas", "gather_gemv")):
        import interaction_jax.model.kernels  # noqa: F401  (registers the kernel impls; lazy: no Pallas import otherwise)
    if impl not in _REGISTRY:
        raise ValueError(f"unknown MoE impl {impl!r}; available: {available_impls()}")
    return impl


def expert_compute(
    x: jax.Array, routing: Routing, weights: ExpertWeights, impl: str = "ragged_dot"
) -> jax.Array:
    """Routed-expert output [T, D] for tokens `x` [T, D] with the backend named `impl`."""
    return _REGISTRY[check_expert_impl(impl)](x, routing, weights)


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


def dense_experts(x: jax.Array, routing: Routing, weights: ExpertWeights) -> jax.Array:
    """Every expert on every token, combined with the routing weights (zero off the routed experts).

    Reads each expert's matrices once and does T x E rows of work: for a short block of tokens
    (a streaming prefill) that is less than gathering T x k expert matrices, and, on backends where
    `ragged_dot` is computed densely over experts for every token-slot (XLA:CPU), half its work.
    """
    dt = x.dtype
    num_tokens, num_experts = x.shape[0], weights.w_gate.shape[0]
    gate = jnp.einsum("td,edf->tef", x, weights.w_gate.astype(dt))
    up = jnp.einsum("td,edf->tef", x, weights.w_up.astype(dt))
    y = jnp.einsum("tef,efd->ted", jax.nn.silu(gate) * up, weights.w_down.astype(dt))  # [T, E, D]
    comb = jnp.zeros((num_tokens, num_experts), jnp.float32)
    comb = comb.at[jnp.arange(num_tokens)[:, None], routing.expert_ids].add(routing.weights.astype(jnp.float32))
    return jnp.einsum("ted,te->td", y.astype(jnp.float32), comb).astype(dt)


def auto_experts(x: jax.Array, routing: Routing, weights: ExpertWeights) -> jax.Array:
    """Picks the backend from the (static) token count: the inference default.

    With fewer routed token-slots than experts (T x k < E, a decode step) gathering only the
    routed matrices reads the least; otherwise every expert's matrices are read anyway, and on
    CPU `dense_experts` is the cheaper way to use them, elsewhere the grouped `ragged_dot`.
    """
    num_tokens, top_k = routing.expert_ids.shape
    if num_tokens * top_k < weights.w_gate.shape[0]:
        return gather_experts(x, routing, weights)
    if jax.default_backend() == "cpu":
        return dense_experts(x, routing, weights)
    return ragged_dot_experts(x, routing, weights)


def batched_swiglu(xb: jax.Array, weights: ExpertWeights) -> jax.Array:
    """Dense per-expert SwiGLU over a capacity buffer xb [E, C, D] -> [E, C, D] (EP local compute)."""
    dt = xb.dtype
    gate = jnp.einsum("ecd,edf->ecf", xb, weights.w_gate.astype(dt))
    up = jnp.einsum("ecd,edf->ecf", xb, weights.w_up.astype(dt))
    return jnp.einsum("ecf,efd->ecd", jax.nn.silu(gate) * up, weights.w_down.astype(dt))


register_expert_impl("ragged_dot", ragged_dot_experts)
register_expert_impl("gather", gather_experts)
register_expert_impl("dense", dense_experts)
register_expert_impl("auto", auto_experts)
