"""Expert parallelism: `jax.shard_map` over the `expert` mesh axis with capacity-based all-to-all.

Layout inside the shard_map (n = size of the expert axis, E_l = E / n experts per device):
  tokens    [T, D]  sharded over every mesh axis except `tensor` (the expert axis doubles as batch);
  w_gate/up [E, D, F] as P(expert, None, tensor); w_down [E, F, D] as P(expert, tensor, None).

Each device scatters its token-slots into a fixed buffer [E, C, D] (C slots per expert and per
source device), `all_to_all` sends expert block i to device i, the device runs its E_l experts
densely on [E_l, n*C, D], partial sums over a sharded F are `psum`-ed over `tensor`, and a second
`all_to_all` returns the results to the tokens' home devices, where they are combined.

Why capacity with dropping rather than a ragged all-to-all: fixed buffer shapes compile to one
static program on every backend (CPU test meshes included) and make communication volume
predictable. Slots beyond capacity are dropped (they contribute 0; the residual carries the
token) and the dropped fraction is reported. `capacity_factor=None` sets C = tokens per device,
which can never drop, so the result equals the single-device dropless backends exactly.
"""

from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from interaction_jax.model.moe.experts import ExpertWeights, _combine, batched_swiglu
from interaction_jax.model.moe.router import Routing


def expert_parallel_active(mesh: Mesh | None, expert_axis: str = "expert") -> bool:
    """True when `mesh` has an expert axis of size > 1 (the layer then takes the EP path)."""
    return mesh is not None and dict(mesh.shape).get(expert_axis, 1) > 1


def expert_capacity(
    tokens_per_device: int, top_k: int, num_experts: int, capacity_factor: float | None
) -> int:
    """Slots per (source device, expert): ceil(cf * t * k / E), clamped to [1, t]; None -> t (dropless)."""
    if capacity_factor is None:
        return max(1, tokens_per_device)
    c = math.ceil(capacity_factor * tokens_per_device * top_k / num_experts)
    return max(1, min(c, tokens_per_device))


def expert_parallel_compute(
    x: jax.Array,
    routing: Routing,
    weights: ExpertWeights,
    mesh: Mesh,
    *,
    capacity_factor: float | None = 1.25,
    expert_axis: str = "expert",
    tensor_axis: str = "tensor",
) -> tuple[jax.Array, jax.Array]:
    """Routed-expert output [T, D] and the fraction of token-slots dropped for capacity (scalar)."""
    num_experts = weights.w_gate.shape[0]
    n = dict(mesh.shape)[expert_axis]
    if num_experts % n:
        raise ValueError(f"num_experts={num_experts} is not divisible by the expert mesh axis size {n}")
    tensor = tensor_axis if tensor_axis in mesh.axis_names else None
    batch_axes = tuple(a for a in mesh.axis_names if a != tensor)
    shards = math.prod(dict(mesh.shape)[a] for a in batch_axes)

    num_tokens, top_k = routing.expert_ids.shape
    pad = -num_tokens % shards
    ids, wts = routing.expert_ids, routing.weights
    if pad:  # padding slots carry the out-of-range id E: they take no capacity and are not counted
        x = jnp.pad(x, ((0, pad), (0, 0)))
        ids = jnp.pad(ids, ((0, pad), (0, 0)), constant_values=num_experts)
        wts = jnp.pad(wts, ((0, pad), (0, 0)))
    capacity = expert_capacity((num_tokens + pad) // shards, top_k, num_experts, capacity_factor)

    body = partial(
        _ep_body,
        num_experts=num_experts,
        n=n,
        capacity=capacity,
        expert_axis=expert_axis,
        tensor_axis=tensor,
        batch_axes=batch_axes,
    )
    tok = P(batch_axes, None)
    w_in = P(expert_axis, None, tensor)
    w_out = P(expert_axis, tensor, None)
    y, dropped = jax.shard_map(
        body,
        mesh=mesh,
        in_specs=(tok, tok, tok, w_in, w_in, w_out),
        out_specs=(tok, P()),
    )(x, ids, wts, weights.w_gate, weights.w_up, weights.w_down)
    return y[:num_tokens], dropped


def _ep_body(
    x, ids, wts, w_gate, w_up, w_down, *, num_experts, n, capacity, expert_axis, tensor_axis, batch_axes
):
    """Per-device dispatch -> local experts -> return -> combine (see module docstring)."""
    t, top_k = ids.shape
    d = x.shape[-1]
    e_local = num_experts // n
    flat = ids.reshape(-1)  # slot s = token * k + j
    valid = flat < num_experts
    one_hot = jax.nn.one_hot(flat, num_experts, dtype=jnp.int32)  # sentinel id -> all zeros
    pos = jnp.sum((jnp.cumsum(one_hot, axis=0) - 1) * one_hot, axis=-1)  # arrival order per expert
    keep = valid & (pos < capacity)
    dest_e = jnp.where(keep, flat, num_experts)  # out of range -> dropped by mode="drop"
    dest_c = jnp.where(keep, pos, 0)
    slot_x = jnp.take(x, jnp.arange(t * top_k) // top_k, axis=0)
    buf = jnp.zeros((num_experts, capacity, d), x.dtype).at[dest_e, dest_c].set(slot_x, mode="drop")

    # [n(dest), E_l, C, D] -> all_to_all -> [n(src), E_l, C, D]
    recv = jax.lax.all_to_all(buf.reshape(n, e_local, capacity, d), expert_axis, 0, 0, tiled=True)
    local = recv.transpose(1, 0, 2, 3).reshape(e_local, n * capacity, d)
    out = batched_swiglu(local, ExpertWeights(w_gate, w_up, w_down))
    if tensor_axis is not None:
        out = jax.lax.psum(out, tensor_axis)
    out = out.reshape(e_local, n, capacity, d).transpose(1, 0, 2, 3)
    back = jax.lax.all_to_all(out, expert_axis, 0, 0, tiled=True).reshape(num_experts, capacity, d)

    slot_out = back.at[dest_e, dest_c].get(mode="fill", fill_value=0)
    slot_out = jnp.where(keep[:, None], slot_out, 0).reshape(t, top_k, d)
    y = _combine(slot_out, Routing(ids, wts, None), x.dtype)

    dropped = jax.lax.psum(jnp.sum(valid & ~keep).astype(jnp.float32), batch_axes)
    total = jax.lax.psum(jnp.sum(valid).astype(jnp.float32), batch_axes)
    return y, dropped / jnp.maximum(total, 1.0)
