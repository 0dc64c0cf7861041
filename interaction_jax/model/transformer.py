"""Decoder-only backbone: pre-norm blocks (RMSNorm -> GQA attention, RMSNorm -> SwiGLU or MoE).

Layers follow `c.model.layer_pattern`, a comma list such as "dense", "moe" or "dense,moe" that
repeats to `num_layers`. One repetition is a *group*; groups are identical in structure, so
their parameters are created stacked along a leading "layers" axis (`nnx.vmap` with
`transform_metadata`) and run with `jax.lax.scan` over that axis: compile time stays constant
in depth, and mixed dense/MoE patterns still scan (the scan body holds one whole group).
`scan_layers=False` runs the same stacked parameters in an unrolled Python loop (handy for
debugging / per-layer profiling) — the parameter tree is identical either way, so checkpoints
do not depend on the switch.

Remat (`remat`): "none"; "full" recomputes the whole group in the backward pass;
"dots" saves matmul outputs without batch dims (`dots_with_no_batch_dims_saveable`) and
recomputes the rest. Parameters live in `param_dtype`, activations in `dtype`.
`model.batch_invariant` makes every matmul, norm and attention of the backbone batch-invariant
(see `layers.py`, `attention.py`); dense layers only.

Training and streaming run the same `Block`s: `__call__` (a sequence over itself), `cached`
(a block against a `kv_cache.BlockCache`: any row layout, any registered cache-attention
strategy; the streaming engine's path) and `step` (`cached` on the model's own linear
`KVCache(k, v, lengths)`, k, v: [num_layers, B, max_len, num_kv_heads, head_dim], layer
l = group * len(pattern) + i, lengths: [B] int32 rows written per slot).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from interaction_jax.model.attention import Attention
from interaction_jax.model.kv_cache import BlockCache, LinearRows, linear_view, resolve_strategy
from interaction_jax.model.layers import RMSNorm, fan_in_init, matmul, param

LAYER_KINDS = ("dense", "moe")
REMAT_POLICIES = ("none", "full", "dots")


class KVCache(NamedTuple):
    """Per-layer K/V (stacked over layers) and per-slot lengths; see the module docstring."""

    k: jax.Array
    v: jax.Array
    lengths: jax.Array


def batch_invariant(cfg) -> bool:
    """`model.batch_invariant` (absent in older / hand-built configs = off)."""
    return bool(cfg.get("batch_invariant", False))


def parse_pattern(pattern: str, num_layers: int) -> tuple[str, ...]:
    """ "dense,moe" -> ("dense", "moe"); checks names and that it tiles num_layers."""
    kinds = tuple(p.strip() for p in pattern.split(",") if p.strip())
    if not kinds or any(k not in LAYER_KINDS for k in kinds):
        raise ValueError(f"layer_pattern={pattern!r}: entries must be from {LAYER_KINDS}")
    if num_layers % len(kinds):
        raise ValueError(f"num_layers={num_layers} is not a multiple of layer_pattern {kinds} (len {len(kinds)})")
    return kinds


class SwiGLU(nnx.Module):
    """Dense feed-forward: (silu(x W_gate) * x W_up) W_down."""

    def __init__(self, d_model: int, ffn_dim: int, *, dtype=jnp.float32, param_dtype=jnp.float32,
                 batch_invariant: bool = False, rngs: nnx.Rngs):
        self.dtype = dtype
        self.batch_invariant = bool(batch_invariant)
        self.w_gate = param(rngs, fan_in_init(d_model), (d_model, ffn_dim), ("embed", "mlp"), param_dtype)
        self.w_up = param(rngs, fan_in_init(d_model), (d_model, ffn_dim), ("embed", "mlp"), param_dtype)
        self.w_down = param(rngs, fan_in_init(ffn_dim), (ffn_dim, d_model), ("mlp", "embed"), param_dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        dt, bi = self.dtype, self.batch_invariant
        x = x.astype(dt)
        h = jax.nn.silu(matmul(x, self.w_gate[...].astype(dt), bi)) * matmul(x, self.w_up[...].astype(dt), bi)
        return matmul(h, self.w_down[...].astype(dt), bi)


class Block(nnx.Module):
    """x + attn(norm(x)); x + ffn(norm(x)). `ffn` is SwiGLU ("dense") or MoEFeedForward ("moe")."""

    def __init__(self, cfg, kind: str, *, dtype, param_dtype, rngs: nnx.Rngs):
        d = int(cfg.d_model)
        self.kind = kind
        bi = batch_invariant(cfg)
        if bi and kind == "moe":
            raise ValueError("model.batch_invariant=True supports dense layers only (layer_pattern has 'moe'): "
                             "routing and expert kernels have no batch-invariant formulation yet")
        self.attn_norm = RMSNorm(d, param_dtype=param_dtype, batch_invariant=bi, rngs=rngs)
        self.attn = Attention(
            d,
            int(cfg.num_heads),
            int(cfg.num_kv_heads),
            int(cfg.head_dim),
            rope_theta=float(cfg.rope_theta),
            window=int(cfg.sliding_window),
            sinks=int(cfg.attention_sinks),
            impl=str(cfg.attention_impl),
            dtype=dtype,
            param_dtype=param_dtype,
            batch_invariant=bi,
            rngs=rngs,
        )
        self.ffn_norm = RMSNorm(d, param_dtype=param_dtype, batch_invariant=bi, rngs=rngs)
        if kind == "moe":
            from interaction_jax.model.moe import MoEFeedForward  # lazy: the dense path must not need it

            self.ffn = MoEFeedForward(d, cfg.moe, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        else:
            self.ffn = SwiGLU(d, int(cfg.ffn_dim), dtype=dtype, param_dtype=param_dtype, batch_invariant=bi, rngs=rngs)

    def __call__(
        self, x: jax.Array, positions: jax.Array, cache: BlockCache | None = None, mask: jax.Array | None = None
    ) -> tuple[jax.Array, dict, BlockCache | None]:
        """One block for training (cache=None) and streaming (a `BlockCache`, returned updated).
        `mask` [B, L] (valid positions) only enters the MoE losses/counts, never the outputs.
        The named scopes ("attn", "ffn") only label the compiled ops for profiles."""
        with jax.named_scope("attn"):
            h = self.attn_norm(x)
            if cache is None:
                y = self.attn(h, positions)
            else:
                y, cache = self.attn(h, positions, cache)
            x = x + y.astype(x.dtype)
        with jax.named_scope("ffn"):
            h = self.ffn_norm(x)
            if self.kind == "moe":
                y, aux = self.ffn(h, mask)
            else:
                y, aux = self.ffn(h), {}
            return x + y.astype(x.dtype), aux, cache


class LayerGroup(nnx.Module):
    """One repetition of the layer pattern (the unit that is stacked and scanned)."""

    def __init__(self, cfg, pattern: tuple[str, ...], *, dtype, param_dtype, rngs: nnx.Rngs):
        self.blocks = nnx.List([Block(cfg, kind, dtype=dtype, param_dtype=param_dtype, rngs=rngs) for kind in pattern])

    def __call__(self, x, positions, cache: BlockCache | None = None, mask=None, group: int | jax.Array = 0):
        """Blocks in pattern order; with a cache, block i of group `group` is layer
        group * len(pattern) + i of it. Returns (x, aux, cache or None)."""
        lb, z, counts, dropped = jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32), [], []
        for i, block in enumerate(self.blocks):
            layer_cache = None if cache is None else cache.replace(layer=group * len(self.blocks) + i)
            x, aux, layer_cache = block(x, positions, layer_cache, mask)
            cache = layer_cache if cache is not None else None
            if aux:
                lb = lb + aux["load_balance_loss"].astype(jnp.float32)
                z = z + aux["z_loss"].astype(jnp.float32)
                counts.append(aux["expert_counts"])
                dropped.append(aux["dropped_fraction"].astype(jnp.float32))
        out_aux = {"load_balance_loss": lb, "z_loss": z}
        if counts:  # per MoE block of the group, in pattern order: [n_moe_in_group, E]
            out_aux["expert_counts"] = jnp.stack(counts)
            out_aux["dropped_fraction"] = jnp.stack(dropped)
        return x, out_aux, cache


def _remat(fn, policy: str):
    if policy == "none":
        return fn
    if policy == "full":
        return jax.checkpoint(fn, prevent_cse=False)
    if policy == "dots":
        return jax.checkpoint(fn, prevent_cse=False, policy=jax.checkpoint_policies.dots_with_no_batch_dims_saveable)
    raise ValueError(f"remat={policy!r}: expected one of {REMAT_POLICIES}")


class Transformer(nnx.Module):
    """Stacked, scanned layer groups + a final RMSNorm. See the module docstring."""

    def __init__(self, cfg, *, rngs: nnx.Rngs):
        self.dtype = jnp.dtype(cfg.dtype)
        param_dtype = jnp.dtype(cfg.param_dtype)
        self.pattern = parse_pattern(str(cfg.layer_pattern), int(cfg.num_layers))
        self.num_groups = int(cfg.num_layers) // len(self.pattern)
        self.num_layers = int(cfg.num_layers)
        self.num_moe = self.num_groups * sum(k == "moe" for k in self.pattern)
        self.remat = str(cfg.remat)
        self.scan_layers = bool(cfg.scan_layers)
        self.window, self.sinks = int(cfg.sliding_window), int(cfg.attention_sinks)
        self.impl, self.batch_invariant = str(cfg.attention_impl), batch_invariant(cfg)
        _remat(lambda x: x, self.remat)  # validate early
        dtype, pattern = self.dtype, self.pattern

        @nnx.split_rngs(splits=self.num_groups)
        @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
        def make_groups(rngs):
            return LayerGroup(cfg, pattern, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

        self.groups = make_groups(rngs)
        self.final_norm = RMSNorm(int(cfg.d_model), param_dtype=param_dtype, batch_invariant=batch_invariant(cfg),
                                  rngs=rngs)

    def _run(self, x, positions, mask, cache: BlockCache | None = None, groups=None):
        """The layer loop. The cache's K/V ride in the carry (whole, stacked over layers); each
        group rebuilds its `BlockCache` around them. `groups`: the layer-group modules with
        unstacked weights (the engine's decode layout, `inference/layer_params.py`), run in an
        unrolled loop; otherwise the stacked groups are scanned (or sliced, `scan_layers=False`)."""

        def run_group(group, g, x, kv):
            c = None if kv is None else cache.replace(k=kv[0], v=kv[1])
            x, aux, c = group(x, positions, c, mask, g)
            return x, (None if c is None else (c.k, c.v)), aux

        kv = None if cache is None else (cache.k, cache.v)
        if groups is not None:
            outs = []
            for g, group in enumerate(groups):
                x, kv, aux = run_group(group, g, x, kv)
                outs.append(aux)
            aux = jax.tree.map(lambda *a: jnp.stack(a), *outs)
        else:
            graphdef, state = nnx.split(self.groups)

            def body(carry, xs):
                gstate, g = xs
                x, kv, aux = run_group(nnx.merge(graphdef, gstate), g, *carry)
                return (x, kv), aux

            body = _remat(body, self.remat)
            index = jnp.arange(self.num_groups, dtype=jnp.int32)
            if self.scan_layers:
                (x, kv), aux = jax.lax.scan(body, (x, kv), (state, index))
            else:
                outs = []
                for g in range(self.num_groups):
                    (x, kv), out = body((x, kv), (jax.tree.map(lambda a, g=g: a[g], state), index[g]))
                    outs.append(out)
                aux = jax.tree.map(lambda *a: jnp.stack(a), *outs)
        # aux leaves are stacked over groups: mean the losses over MoE layers, sum the counts; the
        # per-layer counts [groups, n_moe_in_group, E] feed the sigmoid router's bias update.
        denom = max(self.num_moe, 1)
        out_aux = {
            "load_balance_loss": jnp.sum(aux["load_balance_loss"]) / denom,
            "z_loss": jnp.sum(aux["z_loss"]) / denom,
        }
        if "expert_counts" in aux:
            out_aux["expert_counts"] = jnp.sum(aux["expert_counts"], axis=(0, 1))
            out_aux["expert_counts_per_layer"] = aux["expert_counts"]
            out_aux["dropped_fraction"] = jnp.mean(aux["dropped_fraction"])
        return self.final_norm(x), out_aux, None if cache is None else cache.replace(k=kv[0], v=kv[1])

    def __call__(self, x: jax.Array, positions: jax.Array, mask: jax.Array | None = None) -> tuple[jax.Array, dict]:
        """x [B, L, D], positions [B, L] -> (final-normed hidden [B, L, D], aux losses).
        `mask` [B, L] (e.g. `valid`) restricts the MoE losses / counts to real positions."""
        h, aux, _ = self._run(x.astype(self.dtype), positions, mask)
        return h, aux

    def init_cache(self, batch_size: int, max_len: int, num_kv_heads: int, head_dim: int) -> KVCache:
        shape = (self.num_layers, batch_size, max_len, num_kv_heads, head_dim)
        return KVCache(jnp.zeros(shape, self.dtype), jnp.zeros(shape, self.dtype), jnp.zeros((batch_size,), jnp.int32))

    def cached(
        self, x: jax.Array, positions: jax.Array, cache: BlockCache, mask: jax.Array | None = None, groups=None
    ) -> tuple[jax.Array, dict, BlockCache]:
        """A block x [B, S, D] against `cache` (any row layout and strategy, `kv_cache.py`):
        (final-normed hidden, aux, cache with the block's K/V written). The streaming engine's path."""
        return self._run(x.astype(self.dtype), positions, mask, cache, groups)

    def step(
        self, x: jax.Array, positions: jax.Array, cache: KVCache, mask: jax.Array | None = None
    ) -> tuple[jax.Array, dict, KVCache]:
        """A block x [B, S, D] appended to a linear `cache`; returns (hidden, aux, cache advanced by S)."""
        rows = LinearRows(self.window, self.sinks)
        strategy = resolve_strategy("dense", batch_invariant=self.batch_invariant, impl=self.impl)
        view = linear_view(cache.lengths, x.shape[1], cache.k.shape[2])
        h, aux, out = self.cached(x, positions, BlockCache(cache.k, cache.v, view, 0, rows, strategy), mask)
        return h, aux, KVCache(out.k, out.v, cache.lengths + x.shape[1])
