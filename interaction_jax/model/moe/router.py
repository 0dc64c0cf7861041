"""Top-k routing and its auxiliary losses, kept apart from expert compute.

Routing only decides *which* experts see each token and with what weight; every compute backend
(`experts.py`) and the expert-parallel path consume the same `Routing`, so they can be checked
against each other and swapped without touching the router.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

ROUTER_KINDS = ("softmax", "sigmoid")


class Routing(NamedTuple):
    """Routing decision for T tokens over E experts.

    expert_ids: [T, k] int32, the chosen experts per token (distinct within a row).
    weights:    [T, k] float32, combination weights over the chosen experts (sum to 1 per row).
    probs:      [T, E] float32, per-expert router probability used by the load-balancing loss
                (softmax: the softmax; sigmoid: sigmoid scores normalised to sum 1 over E).
    """

    expert_ids: jax.Array
    weights: jax.Array
    probs: jax.Array


def route(logits: jax.Array, top_k: int, kind: str = "softmax", bias: jax.Array | None = None) -> Routing:
    """Chooses `top_k` experts per token from router `logits` [T, E].

    softmax: p = softmax(logits); pick top-k of p; weights = p_chosen / sum(p_chosen).
    sigmoid (DeepSeek-V3): s = sigmoid(logits); pick top-k of s + bias, where `bias` [E] is a
      non-gradient balancing offset used *only for selection*; weights = s_chosen / sum(s_chosen).
    """
    logits = logits.astype(jnp.float32)
    num_experts = logits.shape[-1]
    if not 1 <= top_k <= num_experts:
        raise ValueError(f"top_k={top_k} must be in [1, num_experts={num_experts}]")
    if kind == "softmax":
        probs = jax.nn.softmax(logits, axis=-1)
        chosen, ids = jax.lax.top_k(probs, top_k)
    elif kind == "sigmoid":
        scores = jax.nn.sigmoid(logits)
        select = scores if bias is None else scores + jax.lax.stop_gradient(bias.astype(jnp.float32))
        _, ids = jax.lax.top_k(select, top_k)
        chosen = jnp.take_along_axis(scores, ids, axis=-1)
        probs = scores / jnp.sum(scores, axis=-1, keepdims=True)
    else:
        raise ValueError(f"unknown router kind {kind!r}; expected one of {ROUTER_KINDS}")
    weights = chosen / jnp.maximum(jnp.sum(chosen, axis=-1, keepdims=True), 1e-9)
    return Routing(ids.astype(jnp.int32), weights, probs)


def expert_counts(expert_ids: jax.Array, num_experts: int, mask: jax.Array | None = None) -> jax.Array:
    """Token-slots routed to each expert, [E] int32 (`mask` [T] excludes padding tokens)."""
    one_hot = jax.nn.one_hot(expert_ids, num_experts, dtype=jnp.int32)  # [T, k, E]
    if mask is not None:
        one_hot = one_hot * mask.astype(jnp.int32)[:, None, None]
    return jnp.sum(one_hot, axis=(0, 1))


def load_balance_loss(routing: Routing, mask: jax.Array | None = None) -> jax.Array:
    """Switch/GShard balancing loss  L = E * sum_e f_e * P_e.

    f_e = (token-slots routed to e) / (T * k)   -- not differentiable (counts)
    P_e = mean over tokens of probs[:, e]        -- carries the gradient to the router
    Perfectly balanced uniform routing gives 1; everything on one expert gives E * P_e.
    Tokens with mask == 0 are left out of both means.
    """
    num_tokens, top_k = routing.expert_ids.shape
    num_experts = routing.probs.shape[-1]
    m = jnp.ones((num_tokens,), jnp.float32) if mask is None else mask.astype(jnp.float32)
    denom = jnp.maximum(jnp.sum(m), 1.0)
    counts = expert_counts(routing.expert_ids, num_experts, m.astype(jnp.int32)).astype(jnp.float32)
    f = counts / (denom * top_k)
    p = jnp.sum(routing.probs * m[:, None], axis=0) / denom
    return num_experts * jnp.sum(jax.lax.stop_gradient(f) * p)


def z_loss(logits: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """Router z-loss (ST-MoE): mean over tokens of logsumexp(logits)^2; keeps logits small."""
    lse = jax.nn.logsumexp(logits.astype(jnp.float32), axis=-1)
    if mask is None:
        return jnp.mean(lse**2)
    m = mask.astype(jnp.float32)
    return jnp.sum(lse**2 * m) / jnp.maximum(jnp.sum(m), 1.0)


def update_router_bias(bias: jax.Array, counts: jax.Array, rate: float) -> jax.Array:
    """Aux-loss-free balancing step (DeepSeek-V3): b_e += rate * sign(mean(counts) - counts_e).

    Overloaded experts are pushed down, underloaded ones up. bias / counts [..., E]: one layer's,
    or layers stacked in front (each layer balanced against its own mean). Pure: the train step
    applies it to every `RouterBias` with that layer's counts (`apply_router_bias_updates`).
    """
    counts = counts.astype(jnp.float32)
    return (bias + rate * jnp.sign(jnp.mean(counts, axis=-1, keepdims=True) - counts)).astype(bias.dtype)
