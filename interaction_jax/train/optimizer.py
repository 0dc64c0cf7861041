"""Optimizer: AdamW, linear warmup + cosine decay, global-norm clipping, weight-decay mask.

Weight decay skips 1-D parameters (norm scales, biases) and embedding lookup tables, following common
practice for transformers; the mask is computed from parameter paths and shapes so it needs
no per-module bookkeeping.
"""

from __future__ import annotations

import math

import jax
import optax


def accumulation_steps(cfg) -> int:
    """`train.grad_accum_steps` (micro-batches per optimizer update), checked."""
    k = int(cfg.grad_accum_steps)
    if k < 1:
        raise ValueError(f"train.grad_accum_steps={cfg.grad_accum_steps} must be >= 1")
    return k


def learning_rate_schedule(cfg) -> optax.Schedule:
    """Learning rate as a function of the number of optimizer updates applied so far.

    `train.num_steps` and `train.warmup_steps` count training steps (micro-batches: what the loop,
    the logs and the checkpoints count), exactly as before for `grad_accum_steps=1`. With k > 1
    accumulation steps an update takes k micro-batches, so the run makes num_steps / k updates and
    the schedule is laid out over those: linear warmup to `learning_rate` over
    ceil(warmup_steps / k) updates, cosine to `min_lr_ratio` at num_steps / k updates. Warmup and
    decay therefore end with the run for any k (optax's `MultiSteps` counts updates, not
    micro-steps: a schedule in micro-steps would reach only 1/k of its decay).
    """
    k = accumulation_steps(cfg)
    warmup = max(1, math.ceil(int(cfg.warmup_steps) / k))
    decay = max(warmup + 1, int(cfg.num_steps) // k)
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=float(cfg.learning_rate),
        warmup_steps=warmup,
        decay_steps=decay,
        end_value=float(cfg.learning_rate) * float(cfg.min_lr_ratio),
    )


def applied_updates(opt_state) -> jax.Array:
    """How many optimizer updates `opt_state` has applied: the count the learning-rate schedule reads.

    Read from the optimizer's own `ScaleByScheduleState`, so it lags the loop's step under gradient
    accumulation and under skipped non-finite updates exactly as the applied learning rate does.
    """
    for path, count in optax.tree_utils.tree_get_all_with_path(opt_state, "count"):
        if getattr(path[-1], "tuple_name", None) == "ScaleByScheduleState":
            return count
    raise ValueError("optimizer state holds no ScaleByScheduleState count (not built by make_optimizer?)")


EMBEDDING_TABLES = ("table", "kind")  # lookup tables (text, dMel, kind); the hMLP's projections do decay


def _decay_mask(params):
    def keep(path, leaf):
        keys = [str(getattr(p, "key", getattr(p, "name", p))).lower() for p in path]
        keys = [k for k in keys if k != "value"]  # nnx.Param leaves may end in a `value` key
        if leaf.ndim <= 1 or any(s in k for k in keys for s in ("norm", "scale", "bias")):
            return False
        return not ("embed" in keys and keys[-1] in EMBEDDING_TABLES)

    return jax.tree_util.tree_map_with_path(keep, params)


def make_optimizer(cfg) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """Builds the optimizer from `config.train`; returns it and its learning-rate schedule (in updates)."""
    schedule = learning_rate_schedule(cfg)
    tx = optax.chain(
        optax.clip_by_global_norm(float(cfg.grad_clip_norm)) if cfg.grad_clip_norm > 0 else optax.identity(),
        optax.adamw(
            learning_rate=schedule,
            b1=float(cfg.adam_b1),
            b2=float(cfg.adam_b2),
            eps=1e-8,
            weight_decay=float(cfg.weight_decay),
            mask=_decay_mask,
        ),
    )
    if accumulation_steps(cfg) > 1:
        tx = optax.MultiSteps(tx, every_k_schedule=accumulation_steps(cfg)).gradient_transformation()
    return tx, schedule
