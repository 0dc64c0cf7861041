"""Optimizer: AdamW, linear warmup + cosine decay, global-norm clipping, weight-decay mask.

Weight decay skips 1-D parameters (norm scales, biases) and embedding lookup tables, following common
practice for transformers; the mask is computed from parameter paths and shapes so it needs
no per-module bookkeeping.
"""

from __future__ import annotations

import jax
import optax


def learning_rate_schedule(cfg) -> optax.Schedule:
    """Linear warmup to `cfg.learning_rate` over `cfg.warmup_steps`, cosine to `min_lr_ratio` at `num_steps`."""
    warmup = max(1, int(cfg.warmup_steps))
    decay = max(warmup + 1, int(cfg.num_steps))
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=float(cfg.learning_rate),
        warmup_steps=warmup,
        decay_steps=decay,
        end_value=float(cfg.learning_rate) * float(cfg.min_lr_ratio),
    )


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
    """Builds the optimizer from `config.train`; returns it and its learning-rate schedule."""
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
    if int(cfg.grad_accum_steps) > 1:
        tx = optax.MultiSteps(tx, every_k_schedule=int(cfg.grad_accum_steps)).gradient_transformation()
    return tx, schedule
