"""The streaming engine on a device mesh (`inference.mesh`): placement of parameters and KV cache.

Same mesh axes `(data, fsdp, expert, tensor)` and the same logical-axis rules table as training
(`parallel/rules.py`): attention heads and FFN hidden units over `tensor`, MoE experts over
`expert`, embeddings over `fsdp`, small vectors replicated. The KV cache [layers, slots, rows,
kv_heads, head_dim] is sharded by slot over the `cache_slots` axes (data, fsdp) and by kv-head
over `tensor`; every per-slot array of the state and the step's inputs/outputs follow the slot
sharding. A mesh axis that does not divide a dimension is dropped for it (replicated).

The step stays one jitted function (GSPMD partitions it); reading the cache is the one place the
engine goes manual: the cache-attention strategy runs under `shard_map` on each device's own
slots and kv-heads (`sharded_strategy`), so a live-window or Pallas decode kernel reads only its
local rows and never an all-gathered cache. MoE layers run their single-device backend under
GSPMD on expert-sharded weights (exact: no capacity dropping); Pallas MoE backends, which GSPMD
cannot partition, fall back to "auto" with one warning.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from interaction_jax.errors import UserError
from interaction_jax.model.kv_cache import CacheView, cache_attention_fn, register_cache_attention
from interaction_jax.parallel.mesh import _fit_spec, _path_name, make_mesh
from interaction_jax.parallel.rules import LOGICAL_RULES, MESH_AXES, logical_to_spec

CACHE_NAMES = ("layers", "cache_slots", "cache_length", "kv_heads", "head_dim")
# strategies that cannot run per device under shard_map (read across slots): left to GSPMD
_GLOBAL_STRATEGIES = ("batch_invariant",)
_warned: set[str] = set()


class ServingMeshWarning(UserWarning):
    """A backend cannot run under the serving mesh; the message names what runs instead."""


def warn_once(key: str, message: str) -> None:
    """One warning per distinct `key` for the life of the process."""
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, ServingMeshWarning, stacklevel=3)


def mesh_shape(config) -> dict[str, int]:
    """`inference.mesh` as {axis: size} (missing axes 1); {} where the config has none."""
    shape = config.inference.get("mesh")
    if shape is None:
        return {}
    shape = shape.to_dict() if hasattr(shape, "to_dict") else shape
    if not isinstance(shape, Mapping):
        raise UserError(f"inference.mesh must map axis names {MESH_AXES} to sizes, got {shape!r}")
    return {str(k): int(v) for k, v in shape.items()}


def serving_mesh(config, devices=None) -> Mesh | None:
    """The engine's mesh from `inference.mesh`, over the first devices it needs; None for one device.

    All sizes 1 (the default) means no mesh: the engine runs on the default device exactly as
    before. A -1 axis takes the rest of the devices.
    """
    shape = mesh_shape(config)
    if all(v == 1 for v in shape.values()):
        return None
    devices = list(jax.devices() if devices is None else devices)
    fixed = [v for v in shape.values() if v != -1]
    need = len(devices) if -1 in shape.values() else math.prod(fixed)
    if need > len(devices):
        desc = " x ".join(f"{a}={s}" for a, s in shape.items() if s != 1)
        raise UserError(f"inference.mesh {desc} needs {need} devices but {len(devices)} are available")
    return make_mesh(shape, devices[:need])


def multi_process(mesh: Mesh | None) -> bool:
    """The mesh spans devices of other processes (a `jax.distributed` run): host arrays must be
    made global explicitly and outputs come back replicated so every process can read them."""
    return mesh is not None and jax.process_count() > 1


def put(tree, shardings, mesh: Mesh | None):
    """`tree` placed with `shardings` (a matching tree, or one sharding for every leaf).

    One process: `jax.device_put` (device to device, never via the host). Several processes:
    every process holds the same full values (the same model seed, the same restored
    parameters, the same replicated scheduler's inputs) and each builds its own devices' slices
    from them (`jax.make_array_from_callback`); an array already global with that sharding is
    kept as it is.
    """
    if not multi_process(mesh):
        return jax.device_put(tree, shardings)
    if isinstance(shardings, jax.sharding.Sharding):
        shardings = jax.tree.map(lambda _: shardings, tree)

    def one(x, sharding):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return x if x.sharding == sharding else jax.device_put(x, sharding)
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])

    return jax.tree.map(one, tree, shardings)


def output_sharding(mesh: Mesh, slots: int) -> NamedSharding:
    """The step's outputs: by slot on one process; replicated across processes (each reads all)."""
    return NamedSharding(mesh, PartitionSpec()) if multi_process(mesh) else slot_sharding(mesh, slots)


def describe(mesh: Mesh | None) -> str:
    """'tensor=2 x data=4' (axes of size > 1), or 'one device'."""
    if mesh is None:
        return "one device"
    parts = [f"{a}={n}" for a, n in mesh.shape.items() if n > 1]
    return " x ".join(parts) or "one device"


def fitted(mesh: Mesh, names, shape) -> PartitionSpec:
    """The rules' spec for logical `names`, with axes that do not divide `shape` dropped."""
    return _fit_spec(logical_to_spec(names, LOGICAL_RULES), tuple(shape), mesh)


def slot_sharding(mesh: Mesh, slots: int) -> NamedSharding:
    """Dim 0 (slots) over the cache-slot axes: the state's per-slot arrays, inputs and outputs."""
    return NamedSharding(mesh, fitted(mesh, ("cache_slots",), (slots,)))


def state_shardings(state, mesh: Mesh):
    """`EngineState` of shardings: K/V by the cache rules, every other field by slot."""
    cache = NamedSharding(mesh, fitted(mesh, CACHE_NAMES, state.k.shape))
    slot = slot_sharding(mesh, state.length.shape[0])
    return type(state)(*(cache if name in ("k", "v") else slot for name in state._fields))


def _names(spec: PartitionSpec, ndim: int) -> tuple:
    """Logical names of an array's dims; a leading "layers" name is dropped for a slice of the stack."""
    names = tuple(n if n is None or isinstance(n, str) else n[0] for n in spec)
    if len(names) == ndim + 1 and names[:1] == ("layers",):
        names = names[1:]
    return names[:ndim]


def tree_shardings(state, mesh: Mesh, replicated: list[str]):
    """NamedShardings for an nnx.State (whole or a layer group sliced out of the stack)."""
    if not jax.tree.leaves(state):
        return state
    is_spec = lambda x: isinstance(x, PartitionSpec)  # noqa: E731
    logical = nnx.get_partition_spec(state)

    def one(path, spec, value):
        shape = tuple(np.shape(value))
        names = _names(spec if isinstance(spec, PartitionSpec) else PartitionSpec(), len(shape))
        dropped: list = []
        out = _fit_spec(logical_to_spec(names, LOGICAL_RULES), shape, mesh, dropped)
        if dropped:
            why = ", ".join(f"dim {i} of size {d} not divisible by {a}={n}" for i, d, a, n in dropped)
            replicated.append(f"{_path_name(path)} {shape} ({why})")
        return NamedSharding(mesh, out)

    return jax.tree_util.tree_map_with_path(one, logical, state, is_leaf=is_spec)


def engine_param_shardings(params, mesh: Mesh):
    """Shardings for an `EngineParams` (outer model + per-group slices); one warning names every
    parameter a mesh axis could not divide (it is replicated along that axis)."""
    replicated: list[str] = []
    outer = tuple(tree_shardings(s, mesh, replicated) for s in params.outer)
    groups = tuple(tuple(tree_shardings(s, mesh, replicated) for s in g) for g in params.groups)
    if replicated:
        shown = "; ".join(replicated[:12]) + (f"; and {len(replicated) - 12} more" if len(replicated) > 12 else "")
        warn_once(f"replicated:{describe(mesh)}:{shown}",
                  f"inference.mesh {describe(mesh)}: {len(replicated)} parameter(s) replicated along mesh axes "
                  f"that do not divide their shape: {shown}")
    return type(params)(outer, groups)


# ---- cache attention per device --------------------------------------------------------------------
_SHARDED: dict[tuple[str, int], str] = {}


def sharded_strategy(name: str, mesh: Mesh) -> str:
    """A registered strategy that runs `name` under `shard_map`, each device on its own slots and
    kv-heads (specs from the cache's rules, fitted to the shapes at trace time). Strategies that
    read across slots ("batch_invariant") stay global (GSPMD) with one warning."""
    if name in _GLOBAL_STRATEGIES:
        warn_once(f"global:{name}", f"inference.mesh {describe(mesh)}: cache attention {name!r} reads across "
                  "slots and runs partitioned by XLA (not per device)")
        return name
    key = (name, id(mesh))
    if key in _SHARDED:
        return _SHARDED[key]
    base = cache_attention_fn(name)

    def fn(q, k, v, layer, view: CacheView, rows, impl):
        cache_spec = fitted(mesh, CACHE_NAMES, k.shape)
        slot_e, head_e = cache_spec[1] if len(cache_spec) > 1 else None, cache_spec[3] if len(cache_spec) > 3 else None
        if q.shape[0] != k.shape[1]:
            slot_e = None
        q_spec = PartitionSpec(slot_e, None, head_e, None)
        c_spec = PartitionSpec(None, slot_e, None, head_e, None)
        v_spec = PartitionSpec(slot_e, None)
        static = isinstance(layer, int)

        def local(q, k, v, view, *maybe_layer):
            return base(q, k, v, layer if static else maybe_layer[0], view, rows, impl)

        in_specs = (q_spec, c_spec, c_spec, CacheView(v_spec, v_spec, v_spec, v_spec))
        in_specs += () if static else (PartitionSpec(),)
        args = (q, k, v, view) + (() if static else (layer,))
        return jax.shard_map(local, mesh=mesh, in_specs=in_specs, out_specs=q_spec, check_vma=False)(*args)

    sharded = f"{name}@mesh{id(mesh)}"
    register_cache_attention(sharded, fn, overwrite=True)
    _SHARDED[key] = sharded
    return sharded


# ---- kernel backends ---------------------------------------------------------------------------------
def mesh_moe_impl(requested: str, model_impl: str, mesh: Mesh) -> str:
    """The MoE backend the engine runs under `mesh`: Pallas kernels (a custom call XLA cannot
    partition over expert-/tensor-sharded weights) fall back to "auto", with one warning."""
    effective = model_impl if requested == "model" else requested
    if effective.startswith(("pallas", "gather_gemv")):
        warn_once(f"moe:{effective}", f"inference.mesh {describe(mesh)}: MoE backend {effective!r} cannot run on "
                  "sharded expert weights; the engine runs 'auto' (XLA gather / dense experts, partitioned by XLA)")
        return "auto"
    return requested


# ---- memory plan (no devices needed) -----------------------------------------------------------------
class _SizedMesh:
    """Just the `.shape` of a mesh: what `_fit_spec` reads (plans for meshes larger than the host)."""

    def __init__(self, sizes: dict[str, int]):
        self.shape = sizes


def parse_mesh_flag(text: str) -> dict[str, int]:
    """'tensor=4,expert=16' -> {"tensor": 4, "expert": 16} (missing axes are 1)."""
    out: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        if not sep or name not in MESH_AXES or not value.isdigit() or int(value) < 1:
            raise UserError(f"--serving_mesh={text!r}: expected comma-separated AXIS=SIZE with AXIS in {MESH_AXES} "
                            "and SIZE >= 1, e.g. tensor=4,expert=16")
        out[name] = int(value)
    return out


def _shard_bytes(state, sizes: dict[str, int]) -> tuple[int, int]:
    """(global bytes, bytes on one device) of an abstract nnx.State placed by the rules."""
    total = per_device = 0
    if not jax.tree.leaves(state):
        return 0, 0
    is_spec = lambda x: isinstance(x, PartitionSpec)  # noqa: E731
    specs = jax.tree.leaves(nnx.get_partition_spec(state), is_leaf=is_spec)
    for spec, value in zip(specs, jax.tree.leaves(state), strict=True):
        shape, item = tuple(value.shape), np.dtype(value.dtype).itemsize
        names = _names(spec if isinstance(spec, PartitionSpec) else PartitionSpec(), len(shape))
        fit = _fit_spec(logical_to_spec(names, LOGICAL_RULES), shape, _SizedMesh(sizes))
        split = [math.prod(sizes[a] for a in ((e,) if isinstance(e, str) else e)) if e else 1 for e in fit]
        total += math.prod(shape) * item
        per_device += math.prod(d // s for d, s in zip(shape, split + [1] * (len(shape) - len(split)))) * item
    return total, per_device


def serving_plan(config, shape: Mapping[str, int]) -> dict:
    """Bytes per device of the engine's parameters and KV cache on a serving mesh `shape`, from
    `eval_shape` (nothing allocated): parameters as placed by the rules; the cache per session and
    per minute of session (a session's rows live on one slot shard, its kv-heads split over tensor)."""
    from interaction_jax.inference.cache import ContextPolicy
    from interaction_jax.inference.engine import segments
    from interaction_jax.model.interaction_model import InteractionModel
    from interaction_jax.streams.layout import StreamLayout

    sizes = {a: 1 for a in MESH_AXES} | {str(k): int(v) for k, v in dict(shape).items()}
    model = nnx.eval_shape(lambda: InteractionModel(config, rngs=nnx.Rngs(0)))
    _, params, rest = nnx.split(model, nnx.Param, ...)
    p_total, p_dev = (a + b for a, b in zip(_shard_bytes(params, sizes), _shard_bytes(rest, sizes), strict=True))
    layout = StreamLayout.from_config(config)
    policy = ContextPolicy.from_config(config, layout, max(z - a for a, z in segments(layout)))
    L, kvh, hd = model.backbone.num_layers, model.num_kv_heads, model.head_dim
    item = np.dtype(model.backbone.dtype).itemsize
    slots = int(config.inference.slots)
    fit = _fit_spec(logical_to_spec(CACHE_NAMES, LOGICAL_RULES), (L, slots, policy.rows, kvh, hd), _SizedMesh(sizes))
    head_entry = fit[3] if len(fit) > 3 else None
    head_split = math.prod(sizes[a] for a in ((head_entry,) if isinstance(head_entry, str) else head_entry or ()))
    per_position = 2 * L * (kvh // head_split) * hd * item  # K and V of one position, one device
    positions_per_minute = 60.0 / layout.micro_turn_s * layout.mean_positions_per_turn
    # axes that split no parameter on their own (e.g. tensor=3 with 4 heads): every device of such an
    # axis holds what one device would; the rules replicate any dimension an axis does not divide
    # (data shards the sessions, not the parameters)
    alone = lambda a: {**{b: 1 for b in sizes}, a: sizes[a]}  # noqa: E731
    idle = [a for a, n in sizes.items() if n > 1 and a != "data"
            and len(set(_shard_bytes(params, alone(a)))) == 1]
    return {
        "mesh": {a: n for a, n in sizes.items()},
        "devices": math.prod(sizes.values()),
        "param_bytes_total": int(p_total),
        "param_bytes_per_device": int(p_dev),
        "kv_bytes_per_session_minute_per_device": int(round(per_position * positions_per_minute)),
        "kv_bytes_per_session_per_device": int(per_position * policy.rows),
        "context_policy": policy.kind,
        "cache_rows_per_session": int(policy.rows),
        "idle_axes": idle,
    }
