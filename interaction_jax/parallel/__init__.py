"""Mesh, logical axis rules, sharding helpers, multi-host initialisation."""

from interaction_jax.parallel.mesh import (
    MeshError,
    initialize_distributed,
    logical_sharding,
    make_mesh,
    param_shardings,
    resolve_mesh_shape,
    shard_params,
)
from interaction_jax.parallel.rules import LOGICAL_RULES, MESH_AXES, logical_to_spec

__all__ = [
    "LOGICAL_RULES",
    "MESH_AXES",
    "MeshError",
    "initialize_distributed",
    "logical_sharding",
    "logical_to_spec",
    "make_mesh",
    "param_shardings",
    "resolve_mesh_shape",
    "shard_params",
]
