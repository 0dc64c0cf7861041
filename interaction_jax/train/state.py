"""Train state: a plain pytree built once from the config, placed on the mesh at creation.

    state = {"step": int32[], "params": nnx.State (Params), "rest": nnx.State (other variables,
             e.g. the sigmoid router's bias), "opt_state": optax state, "rng": key}

The NNX module is split once (`nnx.split`); the graphdef is static and every step is a pure
function of this pytree. Parameters are created directly in their sharded layout (the init
function is jitted with `out_shardings`), so a large model never materialises on one device.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from interaction_jax.model.interaction_model import InteractionModel
from interaction_jax.parallel import param_shardings
from interaction_jax.train.optimizer import make_optimizer


@dataclasses.dataclass
class TrainSetup:
    """Everything static about a run: module graph, optimizer, shardings."""

    graphdef: nnx.GraphDef
    tx: optax.GradientTransformation
    schedule: optax.Schedule
    mesh: Mesh
    state_shardings: Any  # same tree as the state
    batch_sharding: NamedSharding


def _split(model: nnx.Module):
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    return graphdef, params, rest


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Batch axis over (data, fsdp) — the rules' "batch" mapping; everything else replicated."""
    from interaction_jax.parallel import logical_sharding

    return logical_sharding(mesh, ("batch",))


def abstract_state_on(config, mesh: Mesh) -> tuple[TrainSetup, dict]:
    """The state's structure with its target shardings on `mesh`, without allocating anything.

    Used to create the state (as `out_shardings`) and to restore a checkpoint onto any mesh.
    """
    tx, schedule = make_optimizer(config.train)
    abs_model = nnx.eval_shape(lambda: InteractionModel(config, rngs=nnx.Rngs(params=0)))
    if int(dict(mesh.shape).get("expert", 1)) > 1:  # MoE layers dispatch over the expert axis (all-to-all)
        from interaction_jax.model.moe import set_expert_mesh

        set_expert_mesh(abs_model, mesh)
    graphdef, abs_params, abs_rest = _split(abs_model)
    replicated = NamedSharding(mesh, PartitionSpec())
    p_shard = param_shardings(abs_params, mesh)
    r_shard = param_shardings(abs_rest, mesh) if jax.tree.leaves(abs_rest) else abs_rest
    abs_opt = jax.eval_shape(tx.init, abs_params)
    # optimizer moments take their parameter's sharding; counts and other scalars are replicated
    o_shard = optax.tree_map_params(
        tx, lambda _, s: s, abs_opt, p_shard, transform_non_params=lambda _: replicated,
        is_leaf=lambda x: isinstance(x, NamedSharding),
    )

    def attach(abs_tree, shard_tree):
        return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abs_tree, shard_tree)

    state = {
        "step": jax.ShapeDtypeStruct((), jnp.int32, sharding=replicated),
        "params": attach(abs_params, p_shard),
        "rest": attach(abs_rest, r_shard) if jax.tree.leaves(abs_rest) else abs_rest,
        "opt_state": attach(abs_opt, o_shard),
        "rng": jax.ShapeDtypeStruct((), jax.random.key(0).dtype, sharding=replicated),
    }
    shardings = jax.tree.map(lambda x: x.sharding, state)
    return TrainSetup(graphdef, tx, schedule, mesh, shardings, batch_sharding(mesh)), state


def create_train_state(config, mesh: Mesh, *, seed: int | None = None) -> tuple[TrainSetup, dict]:
    """Builds params and optimizer state directly in their sharded layout on `mesh`."""
    seed = int(config.seed if seed is None else seed)
    setup, _ = abstract_state_on(config, mesh)

    def build(key):
        init_key, run_key = jax.random.split(key)
        model = InteractionModel(config, rngs=nnx.Rngs(params=init_key))
        _, params, rest = _split(model)
        return {
            "step": jnp.zeros((), jnp.int32),
            "params": params,
            "rest": rest,
            "opt_state": setup.tx.init(params),
            "rng": run_key,
        }

    with mesh:
        state = jax.jit(build, out_shardings=setup.state_shardings)(jax.random.key(seed))
    return setup, state


def abstract_state(state: dict) -> dict:
    """ShapeDtypeStructs with the state's shardings (the restore target)."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
