"""Mixture-of-experts: routing (`router`), compute backends (`experts`), expert parallelism, layer."""

from interaction_jax.model.moe.expert_parallel import (
    expert_capacity,
    expert_parallel_active,
    expert_parallel_compute,
)
from interaction_jax.model.moe.experts import (
    ExpertWeights,
    available_impls,
    expert_compute,
    gather_experts,
    ragged_dot_experts,
    register_expert_impl,
)
from interaction_jax.model.moe.layer import MoEFeedForward, RouterBias, apply_router_bias_updates, set_expert_mesh
from interaction_jax.model.moe.router import (
    Routing,
    expert_counts,
    load_balance_loss,
    route,
    update_router_bias,
    z_loss,
)

__all__ = [
    "ExpertWeights",
    "MoEFeedForward",
    "RouterBias",
    "Routing",
    "available_impls",
    "expert_capacity",
    "expert_compute",
    "expert_counts",
    "expert_parallel_active",
    "expert_parallel_compute",
    "gather_experts",
    "load_balance_loss",
    "ragged_dot_experts",
    "register_expert_impl",
    "route",
    "apply_router_bias_updates",
    "set_expert_mesh",
    "update_router_bias",
    "z_loss",
]
