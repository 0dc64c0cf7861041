"""Device mesh construction and parameter placement through the logical-axis rules.

Modules only name logical axes; this file turns a mesh shape into a `Mesh` over `MESH_AXES` and
maps each parameter's logical names (nnx partition metadata) to a `NamedSharding` via `rules.py`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from interaction_jax.errors import UserError
from interaction_jax.parallel.rules import LOGICAL_RULES, MESH_AXES, logical_to_spec


class MeshError(UserError, ValueError):
    """A mesh shape does not fit the devices."""


def _shape_dict(shape) -> dict[str, int]:
    if shape is None:
        return {}
    if hasattr(shape, "to_dict"):  # ml_collections.ConfigDict
        shape = shape.to_dict()
    if not isinstance(shape, Mapping):
        raise MeshError(f"mesh shape must be a mapping of axis name -> size, got {type(shape).__name__}")
    unknown = sorted(set(shape) - set(MESH_AXES))
    if unknown:
        raise MeshError(f"unknown mesh axes {unknown}; mesh axes are {MESH_AXES}")
    return {k: int(v) for k, v in shape.items()}


def resolve_mesh_shape(shape, num_devices: int) -> tuple[int, ...]:
    """Axis sizes in MESH_AXES order; missing axes are 1 and at most one axis may be -1 (fills the rest)."""
    sizes = {a: 1 for a in MESH_AXES} | _shape_dict(shape)
    bad = {a: s for a, s in sizes.items() if s == 0 or s < -1}
    if bad:
        raise MeshError(f"mesh axis sizes must be positive (or -1 for 'the rest'), got {bad}")
    free = [a for a, s in sizes.items() if s == -1]
    if len(free) > 1:
        raise MeshError(f"at most one mesh axis may be -1, got {free}")
    fixed = math.prod(s for s in sizes.values() if s != -1)
    if free:
        if num_devices % fixed:
            raise MeshError(f"cannot fill axis {free[0]!r}: {num_devices} devices not divisible by {fixed}")
        sizes[free[0]] = num_devices // fixed
    total = math.prod(sizes.values())
    if total != num_devices:
        desc = " x ".join(f"{a}={s}" for a, s in sizes.items())
        raise MeshError(
            f"mesh {desc} needs {total} devices but {num_devices} are available; "
            "the product of the axis sizes must equal the device count"
        )
    return tuple(sizes[a] for a in MESH_AXES)


def make_mesh(shape=None, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """`Mesh` over MESH_AXES from `{"data": 2, "fsdp": 4, ...}` (dict or ConfigDict), default all-`fsdp`.

    Axes are `Auto` so jit/GSPMD propagates shardings and `shard_map` can go manual over them.
    """
    devices = list(jax.devices() if devices is None else devices)
    if shape is None:
        shape = {"fsdp": -1}
    sizes = resolve_mesh_shape(shape, len(devices))
    try:
        from jax.experimental import mesh_utils

        grid = mesh_utils.create_device_mesh(sizes, devices=devices)
    except (ValueError, NotImplementedError, AssertionError):  # topology-unaware fallback
        grid = np.asarray(devices, dtype=object).reshape(sizes)
    return Mesh(grid, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def logical_sharding(
    mesh: Mesh, logical_names: Sequence[str | None] | None, rules=LOGICAL_RULES
) -> NamedSharding:
    """NamedSharding for an array whose dims carry `logical_names` (e.g. ("batch", "length", "act_embed"))."""
    return NamedSharding(mesh, logical_to_spec(logical_names, rules))


def _fit_spec(spec: PartitionSpec, shape: tuple[int, ...], mesh: Mesh, dropped: list | None = None) -> PartitionSpec:
    """Drops mesh axes from dims they do not divide (tiny test models on big meshes replicate instead).

    Each dropped (dim, size, mesh axis, axis size) is appended to `dropped` when given."""
    sizes = dict(mesh.shape)
    out = []
    for i, (dim, entry) in enumerate(zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec)))):
        axes = () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)
        kept, prod = [], 1
        for a in axes:
            if dim % (prod * sizes[a]) == 0:
                kept.append(a)
                prod *= sizes[a]
            elif dropped is not None and sizes[a] > 1:
                dropped.append((i, dim, a, sizes[a]))
        out.append(None if not kept else kept[0] if len(kept) == 1 else tuple(kept))
    while out and out[-1] is None:
        out.pop()
    return PartitionSpec(*out)


class ReplicatedParamWarning(UserWarning):
    """param_shardings(strict=False) replicated a dimension the mesh axis its rule names does not divide."""


def _path_name(path) -> str:
    keys = [str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path]
    return "/".join(keys[:-1] if keys and keys[-1] == "value" else keys)  # nnx.Param leaves end in `value`


def param_shardings(state, mesh: Mesh, rules=LOGICAL_RULES, *, strict: bool = False):
    """Tree of NamedShardings matching `state` (an nnx.State, real or abstract), from its partition metadata.

    With strict=False a mesh axis that does not divide a dimension is dropped for that dimension
    (that dimension is replicated, costing memory on every device); the parameters affected are
    named with their shapes in one `ReplicatedParamWarning`, so a mis-sized model is never
    replicated silently. strict=True leaves the spec as the rules give it (jit then rejects it).
    """
    is_spec = lambda x: isinstance(x, PartitionSpec)
    logical = nnx.get_partition_spec(state)
    replicated: list[str] = []

    def one(path, spec: PartitionSpec, value) -> NamedSharding:
        names = tuple(n if n is None or isinstance(n, str) else _single(n) for n in spec)
        mesh_spec = logical_to_spec(names, rules)
        if not strict:
            dropped: list = []
            shape = tuple(np.shape(value))
            mesh_spec = _fit_spec(mesh_spec, shape, mesh, dropped)
            if dropped:
                why = ", ".join(f"dim {i} of size {d} not divisible by {a}={n}" for i, d, a, n in dropped)
                replicated.append(f"{_path_name(path)} {shape} ({why})")
        return NamedSharding(mesh, mesh_spec)

    out = jax.tree_util.tree_map_with_path(one, logical, state, is_leaf=is_spec)
    if replicated:
        shown = "; ".join(replicated[:20]) + (f"; and {len(replicated) - 20} more" if len(replicated) > 20 else "")
        warnings.warn(
            f"param_shardings: {len(replicated)} parameter(s) replicated along mesh axes that do not divide "
            f"their shape (mesh {dict(mesh.shape)}): {shown}. Choose sizes divisible by the mesh axes, or "
            "pass strict=True to make this an error",
            ReplicatedParamWarning,
            stacklevel=2,
        )
    return out


def _single(names) -> str:
    if len(names) != 1:
        raise ValueError(f"a dimension may carry one logical name, got {names}")
    return names[0]


def shard_params(state, mesh: Mesh, rules=LOGICAL_RULES, *, strict: bool = False):
    """`state` placed on `mesh` according to its logical partition metadata."""
    return jax.device_put(state, param_shardings(state, mesh, rules, strict=strict))


def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    **kwargs,
) -> None:
    """Multi-host start-up: `jax.distributed.initialize`, a no-op for a single process.

    Must run before any other JAX call. With all arguments None, JAX auto-detects the cluster
    (TPU pods, SLURM, ...).
    """
    if num_processes == 1:
        return
    jax.distributed.initialize(
        coordinator_address=coordinator_address, num_processes=num_processes, process_id=process_id, **kwargs
    )
