"""Jitted train and eval steps: pure functions of (state, batch) with donated state.

Compiled once per (config, batch shape): the step number, learning rate and RNG are data,
never Python values, so nothing retraces as training proceeds (tested by counting compiles).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec

from interaction_jax.model.interaction_model import forward, loss_weights, user_text_pairs
from interaction_jax.streams.layout import StreamLayout
from interaction_jax.train.augment import check_self_audio_dropout, mute_self_audio
from interaction_jax.train.optimizer import applied_updates
from interaction_jax.train.state import TrainSetup


def _global_norm(tree) -> jax.Array:
    return optax.global_norm(tree)


def _all_finite(tree) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def _pairs(layout: StreamLayout, batch: dict, weights: dict):
    """Static user-text (source, target) indices for this batch's window, if that loss is on."""
    if weights.get("user_text", 0.0) <= 0.0 or not layout.user_text_slots:
        return None
    layout.require_uniform("model.user_text_loss_weight")
    return user_text_pairs(layout, batch["kinds"].shape[1] // layout.positions_per_turn)


def _router_bias_step(graphdef, params, rest, counts, rate: float, finite):
    """`rest` with every sigmoid router's bias moved against its own layer's load this step
    (`moe.apply_router_bias_updates`); unchanged where the step was skipped as non-finite."""
    from flax import nnx

    from interaction_jax.model.moe import apply_router_bias_updates

    model = nnx.merge(graphdef, params, rest)
    if not apply_router_bias_updates(model, counts, rate):
        return rest
    _, _, new_rest = nnx.split(model, nnx.Param, ...)
    if finite is not None:
        new_rest = jax.tree.map(lambda n, o: jnp.where(finite, n, o), new_rest, rest)
    return new_rest


def make_train_step(config, setup: TrainSetup) -> Callable:
    """`train_step(state, batch) -> (state, metrics)`, jitted with donated state and explicit shardings."""
    weights = loss_weights(config)
    skip_nonfinite = str(config.train.on_nonfinite) == "skip"
    graphdef, tx, schedule = setup.graphdef, setup.tx, setup.schedule
    bias_rate = float(config.model.moe.get("router_bias_rate", 0.0))

    layout = StreamLayout.from_config(config)

    mute_prob = check_self_audio_dropout(float(config.train.get("self_audio_dropout", 0.0)))
    feedback_noise = float(config.train.get("user_speech_feedback_noise", 0.0))

    def step_fn(state, batch):
        rng, sub = jax.random.split(state["rng"])
        pairs = _pairs(layout, batch, weights)
        if mute_prob > 0.0:
            sub, mute_rng = jax.random.split(sub)
            batch = mute_self_audio(batch, mute_rng, mute_prob)

        def loss_fn(params):
            return forward(graphdef, params, batch, sub, state["rest"], weights=weights, user_text_pairs=pairs,
                           feedback_noise=feedback_noise)

        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        finite = jnp.isfinite(loss) & _all_finite(grads)
        if skip_nonfinite:
            keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)  # noqa: E731
            params = keep(params, state["params"])
            opt_state = keep(opt_state, state["opt_state"])
        metrics = dict(metrics)
        rest = state["rest"]
        counts = metrics.pop("expert_counts_per_layer", None)
        if counts is not None and bias_rate > 0:
            rest = _router_bias_step(graphdef, params, rest, counts, bias_rate, finite if skip_nonfinite else None)
        new_state = {
            "step": state["step"] + 1,
            "params": params,
            "rest": rest,
            "opt_state": opt_state,
            "rng": rng,
        }
        metrics["grad_norm"] = _global_norm(grads)
        metrics["param_norm"] = _global_norm(params)
        # the rate this step's gradients are (or, mid-accumulation, will be) applied with: the
        # schedule at the optimizer's own update count, not at the loop's micro-step
        metrics["learning_rate"] = schedule(applied_updates(state["opt_state"]))
        metrics["finite"] = finite
        return new_state, metrics

    replicated = NamedSharding(setup.mesh, PartitionSpec())
    return jax.jit(
        step_fn,
        in_shardings=(setup.state_shardings, setup.batch_sharding),
        out_shardings=(setup.state_shardings, replicated),
        donate_argnums=(0,),
    )


def make_eval_step(config, setup: TrainSetup) -> Callable:
    """`eval_step(state, batch, rng) -> metrics` (same losses as training, no update)."""
    weights = loss_weights(config)
    graphdef = setup.graphdef

    layout = StreamLayout.from_config(config)

    def eval_fn(state, batch, rng):
        pairs = _pairs(layout, batch, weights)
        _, metrics = forward(
            graphdef, state["params"], batch, rng, state["rest"], weights=weights, user_text_pairs=pairs
        )
        return metrics

    replicated = NamedSharding(setup.mesh, PartitionSpec())
    return jax.jit(
        eval_fn,
        in_shardings=(setup.state_shardings, setup.batch_sharding, replicated),
        out_shardings=replicated,
    )


def to_global_batch(batch: dict, setup: TrainSetup) -> dict:
    """Process-local numpy batch -> global jax.Arrays sharded over the batch axis (multi-host safe)."""
    sharding = setup.batch_sharding
    if jax.process_count() == 1:
        return jax.device_put(batch, sharding)
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}
