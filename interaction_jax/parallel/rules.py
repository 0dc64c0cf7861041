"""The one logical-axis-rules table: logical names on parameters/activations -> mesh axes.

Mesh axes are `(data, fsdp, expert, tensor)`. Every parameter is created with logical axis
names (`nnx.with_partitioning(init, LOGICAL_NAMES)` / `sharding` metadata); `logical_to_spec`
maps them through this table. Change a sharding strategy by editing this table (or passing
another one), never by editing modules.
"""

from __future__ import annotations

from collections.abc import Sequence

from jax.sharding import PartitionSpec

MESH_AXES = ("data", "fsdp", "expert", "tensor")

# logical axis -> mesh axis (or tuple of mesh axes, or None = replicated)
LOGICAL_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    # activations
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("act_embed", None),
    # parameters
    ("embed", "fsdp"),
    ("vocab", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("mlp", "tensor"),
    ("expert", "expert"),
    ("expert_mlp", "tensor"),
    ("layers", None),
    ("norm", None),
    ("mel", None),
    ("channels", None),
    ("bins", None),
    ("kinds", None),
    ("conv_in", None),
    ("conv_out", None),
    ("flow_hidden", None),
    # inference cache
    ("cache_slots", ("data", "fsdp")),
    ("cache_length", None),
)


def logical_to_spec(
    names: Sequence[str | None] | None, rules: Sequence[tuple[str, object]] = LOGICAL_RULES
) -> PartitionSpec:
    """PartitionSpec for a tuple of logical names; unknown names raise (typos must not silently replicate)."""
    if names is None:
        return PartitionSpec()
    table = dict(rules)
    out = []
    used: set[str] = set()
    for name in names:
        if name is None:
            out.append(None)
            continue
        if name not in table:
            raise KeyError(f"logical axis {name!r} has no rule; add it to LOGICAL_RULES in parallel/rules.py")
        axis = table[name]
        axes = (axis,) if isinstance(axis, str) else (axis or ())
        axes = tuple(a for a in axes if a not in used)  # a mesh axis may appear once per spec
        used.update(axes)
        out.append(None if not axes else axes[0] if len(axes) == 1 else axes)
    return PartitionSpec(*out)
