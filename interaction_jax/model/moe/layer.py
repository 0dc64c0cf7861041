"""`MoEFeedForward`: router + routed SwiGLU experts (+ optional shared expert) as one NNX module.

The backend is chosen by `cfg.impl` (see `experts.py`); when a mesh with an `expert` axis of
size > 1 is passed, the expert-parallel path (`expert_parallel.py`) is used instead.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh

from interaction_jax.model.moe.expert_parallel import expert_parallel_active, expert_parallel_compute
from interaction_jax.model.moe.experts import ExpertWeights, check_expert_impl, expert_compute
from interaction_jax.model.moe.router import expert_counts, load_balance_loss, route, z_loss


class RouterBias(nnx.Variable):
    """Selection-only router bias (sigmoid router). Not an `nnx.Param`, so optimizers that filter
    on `nnx.Param` leave it alone; the trainer updates it with `update_router_bias`."""


def _partitioned(init, names: tuple[str | None, ...]):
    # Logical names are metadata only; `parallel.mesh.shard_params` maps them to mesh axes.
    return nnx.with_partitioning(init, names, eager_sharding=False)


def _fan_in_init(in_axis: int, out_axis: int, batch_axis: tuple[int, ...] = ()):
    return nnx.initializers.variance_scaling(
        1.0, "fan_in", "truncated_normal", in_axis=in_axis, out_axis=out_axis, batch_axis=batch_axis
    )


class MoEFeedForward(nnx.Module):
    """Top-k mixture of SwiGLU experts. `__call__(x [B, L, D], mask=None) -> (y [B, L, D], aux)`.

    aux (all float32 scalars unless noted):
      load_balance_loss, z_loss, aux_loss (= load_balance_weight * lb + z_loss_weight * z, add it to
      the training loss), expert_counts ([E] int32 routed token-slots, feed `update_router_bias`),
      dropped_fraction (EP capacity drops; 0 on dropless paths).
    """

    def __init__(
        self,
        d_model: int,
        cfg,
        *,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        mesh: Mesh | None = None,
        rngs: nnx.Rngs,
    ):
        self.num_experts = int(cfg.num_experts)
        self.top_k = int(cfg.top_k)
        self.router_kind = str(cfg.router)
        self.impl = str(cfg.impl)
        self.load_balance_weight = float(cfg.load_balance_weight)
        self.z_loss_weight = float(cfg.z_loss_weight)
        self.capacity_factor = getattr(cfg, "capacity_factor", 1.25)
        self.dtype = dtype
        self.mesh = mesh
        e, d, f = self.num_experts, d_model, int(cfg.expert_ffn_dim)

        self.router = nnx.Param(
            _partitioned(_fan_in_init(0, 1), ("embed", None))(rngs.params(), (d, e), param_dtype)
        )
        self.router_bias = RouterBias(jnp.zeros((e,), jnp.float32)) if self.router_kind == "sigmoid" else None
        w_in = _partitioned(_fan_in_init(1, 2, (0,)), ("expert", "embed", "expert_mlp"))
        w_out = _partitioned(_fan_in_init(1, 2, (0,)), ("expert", "expert_mlp", "embed"))
        self.w_gate = nnx.Param(w_in(rngs.params(), (e, d, f), param_dtype))
        self.w_up = nnx.Param(w_in(rngs.params(), (e, d, f), param_dtype))
        self.w_down = nnx.Param(w_out(rngs.params(), (e, f, d), param_dtype))
        if cfg.shared_expert:
            s_in = _partitioned(_fan_in_init(0, 1), ("embed", "mlp"))
            s_out = _partitioned(_fan_in_init(0, 1), ("mlp", "embed"))
            self.shared_gate = nnx.Param(s_in(rngs.params(), (d, f), param_dtype))
            self.shared_up = nnx.Param(s_in(rngs.params(), (d, f), param_dtype))
            self.shared_down = nnx.Param(s_out(rngs.params(), (f, d), param_dtype))
        self.shared_expert = bool(cfg.shared_expert)

    def expert_weights(self) -> ExpertWeights:
        return ExpertWeights(self.w_gate[...], self.w_up[...], self.w_down[...])

    def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
        """`mask` [B, L] (1 = real token) only affects the losses and counts, never the outputs."""
        b, length, d = x.shape
        xt = x.reshape(b * length, d).astype(self.dtype)
        m = None if mask is None else mask.reshape(b * length)
        logits = jnp.dot(xt.astype(jnp.float32), self.router[...].astype(jnp.float32))
        bias = None if self.router_bias is None else self.router_bias[...]
        routing = route(logits, self.top_k, self.router_kind, bias)

        if expert_parallel_active(self.mesh):
            y, dropped = expert_parallel_compute(
                xt, routing, self.expert_weights(), self.mesh, capacity_factor=self.capacity_factor
            )
        else:
            y = expert_compute(xt, routing, self.expert_weights(), self.impl)
            dropped = jnp.zeros((), jnp.float32)
        if self.shared_expert:
            dt = self.dtype
            h = jax.nn.silu(xt @ self.shared_gate[...].astype(dt)) * (xt @ self.shared_up[...].astype(dt))
            y = y + h @ self.shared_down[...].astype(dt)

        lb = load_balance_loss(routing, m)
        zl = z_loss(logits, m)
        aux = {
            "load_balance_loss": lb,
            "z_loss": zl,
            "aux_loss": self.load_balance_weight * lb + self.z_loss_weight * zl,
            "expert_counts": expert_counts(routing.expert_ids, self.num_experts, m),
            "dropped_fraction": dropped,
        }
        return y.reshape(b, length, d), aux


def set_expert_mesh(model: nnx.Module, mesh: Mesh | None, capacity_factor: float | None = None) -> int:
    """Points every `MoEFeedForward` inside `model` at `mesh` (EP turns on where its expert axis > 1).

    Lets a trainer enable expert parallelism after building the model, without threading the mesh
    through every constructor. `capacity_factor` (if given) overrides the config's. Returns how many
    MoE layers were updated. Call before `nnx.split`/jit: the mesh is a static attribute.
    """
    count = 0
    for _, module in nnx.iter_modules(model):
        if isinstance(module, MoEFeedForward):
            module.mesh = mesh
            if capacity_factor is not None:
                module.capacity_factor = capacity_factor
            count += 1
    return count


@contextlib.contextmanager
def expert_impl(model: nnx.Module, impl: str | None) -> Iterator[int]:
    """Temporarily switches every `MoEFeedForward` of `model` to the backend `impl` (None: no change).

    The backend is a static attribute, so `nnx.split` inside the block captures it in the graphdef
    (how the streaming engine serves with its own backend without touching the caller's model).
    Yields how many MoE layers were switched.
    """
    layers = [m for _, m in nnx.iter_modules(model) if isinstance(m, MoEFeedForward)] if impl else []
    if impl:
        check_expert_impl(impl)
    before = [m.impl for m in layers]
    try:
        for m in layers:
            m.impl = impl
        yield len(layers)
    finally:
        for m, old in zip(layers, before, strict=True):
            m.impl = old


def apply_router_bias_updates(model: nnx.Module, counts_per_layer: jax.Array, rate: float) -> int:
    """One aux-loss-free balancing step for every sigmoid router of `model` (in place).

    counts_per_layer [groups, n_moe_in_group, E]: `forward`'s `expert_counts_per_layer`, the j-th
    MoE block of the layer pattern at [:, j]. Each layer's `RouterBias` [groups, E] moves against
    its *own* load (`update_router_bias`). Returns how many bias variables were updated (0 for
    softmax routers). Works inside jit on a merged model; split it again to read the new state.
    """
    from interaction_jax.model.moe.router import update_router_bias

    backbone = model.backbone
    moe_blocks = [i for i, kind in enumerate(backbone.pattern) if kind == "moe"]
    if counts_per_layer.shape[:2] != (backbone.num_groups, len(moe_blocks)):
        raise ValueError(f"apply_router_bias_updates: counts {counts_per_layer.shape} do not match "
                         f"{backbone.num_groups} groups x {len(moe_blocks)} MoE blocks per group")
    updated = 0
    for j, i in enumerate(moe_blocks):
        ffn = backbone.groups.blocks[i].ffn
        if ffn.router_bias is not None:
            ffn.router_bias.value = update_router_bias(ffn.router_bias.value, counts_per_layer[:, j], rate)
            updated += 1
    return updated
