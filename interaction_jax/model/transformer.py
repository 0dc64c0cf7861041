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

The streaming KV cache is an explicit pytree `KVCache(k, v, lengths)` with
k, v: [num_layers, B, max_len, num_kv_heads, head_dim] (layer l = group * len(pattern) + i)
and lengths: [B] int32 (rows written per slot).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from interaction_jax.model.attention import Attention
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

    def _ffn(self, x: jax.Array, mask: jax.Array | None) -> tuple[jax.Array, dict]:
        h = self.ffn_norm(x)
        if self.kind == "moe":
            y, aux = self.ffn(h, mask)
            return x + y.astype(x.dtype), aux
        return x + self.ffn(h).astype(x.dtype), {}

    def __call__(self, x, positions, cache=None, mask=None):
        """cache=None: full sequence. cache=(k, v, lengths): cached block; returns new (k, v).
        `mask` [B, L] (valid positions) only enters the MoE losses/counts, never the outputs."""
        h = self.attn_norm(x)
        if cache is None:
            x = x + self.attn(h, positions).astype(x.dtype)
            new_kv = None
        else:
            k, v, lengths = cache
            y, k, v = self.attn.cached(h, positions, k, v, lengths)
            x = x + y.astype(x.dtype)
            new_kv = (k, v)
        x, aux = self._ffn(x, mask)
        return x, aux, new_kv


class LayerGroup(nnx.Module):
    """One repetition of the layer pattern (the unit that is stacked and scanned)."""

    def __init__(self, cfg, pattern: tuple[str, ...], *, dtype, param_dtype, rngs: nnx.Rngs):
        self.blocks = nnx.List([Block(cfg, kind, dtype=dtype, param_dtype=param_dtype, rngs=rngs) for kind in pattern])

    def __call__(self, x, positions, kv=None, lengths=None, mask=None):
        """kv=None or (k, v) each [P, B, T, KVH, hd]. Returns (x, aux, new kv or None)."""
        lb, z, counts, dropped = jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32), [], []
        new_k, new_v = [], []
        for i, block in enumerate(self.blocks):
            cache = None if kv is None else (kv[0][i], kv[1][i], lengths)
            x, aux, new = block(x, positions, cache, mask)
            if new is not None:
                new_k.append(new[0])
                new_v.append(new[1])
            if aux:
                lb = lb + aux["load_balance_loss"].astype(jnp.float32)
                z = z + aux["z_loss"].astype(jnp.float32)
                counts.append(aux["expert_counts"])
                dropped.append(aux["dropped_fraction"].astype(jnp.float32))
        out_aux = {"load_balance_loss": lb, "z_loss": z}
        if counts:  # per MoE block of the group, in pattern order: [n_moe_in_group, E]
            out_aux["expert_counts"] = jnp.stack(counts)
            out_aux["dropped_fraction"] = jnp.stack(dropped)
        new_kv = None if kv is None else (jnp.stack(new_k), jnp.stack(new_v))
        return x, out_aux, new_kv


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
        _remat(lambda x: x, self.remat)  # validate early
        dtype, pattern = self.dtype, self.pattern

        @nnx.split_rngs(splits=self.num_groups)
        @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
        def make_groups(rngs):
            return LayerGroup(cfg, pattern, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

        self.groups = make_groups(rngs)
        self.final_norm = RMSNorm(int(cfg.d_model), param_dtype=param_dtype, batch_invariant=batch_invariant(cfg),
                                  rngs=rngs)

    def _run(self, x, positions, kv, lengths, mask):
        graphdef, state = nnx.split(self.groups)

        def body(x, xs):
            gstate, gkv = xs
            group = nnx.merge(graphdef, gstate)
            x, aux, new_kv = group(x, positions, gkv, lengths, mask)
            return x, (aux, new_kv)

        body = _remat(body, self.remat)
        if self.scan_layers:
            x, (aux, new_kv) = jax.lax.scan(body, x, (state, kv))
        else:
            outs = []
            for g in range(self.num_groups):
                xs = jax.tree.map(lambda a, g=g: a[g], (state, kv))
                x, out = body(x, xs)
                outs.append(out)
            aux, new_kv = jax.tree.map(lambda *a: jnp.stack(a), *outs)
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
        return self.final_norm(x), out_aux, new_kv

    def __call__(self, x: jax.Array, positions: jax.Array, mask: jax.Array | None = None) -> tuple[jax.Array, dict]:
        """x [B, L, D], positions [B, L] -> (final-normed hidden [B, L, D], aux losses).
        `mask` [B, L] (e.g. `valid`) restricts the MoE losses / counts to real positions."""
        h, aux, _ = self._run(x.astype(self.dtype), positions, None, None, mask)
        return h, aux

    def init_cache(self, batch_size: int, max_len: int, num_kv_heads: int, head_dim: int) -> KVCache:
        shape = (self.num_layers, batch_size, max_len, num_kv_heads, head_dim)
        return KVCache(jnp.zeros(shape, self.dtype), jnp.zeros(shape, self.dtype), jnp.zeros((batch_size,), jnp.int32))

    def step(
        self, x: jax.Array, positions: jax.Array, cache: KVCache, mask: jax.Array | None = None
    ) -> tuple[jax.Array, dict, KVCache]:
        """A block x [B, S, D] against `cache`; returns (hidden, aux, cache advanced by S)."""
        p = len(self.pattern)

        def to_groups(a):
            return a.reshape((self.num_groups, p) + a.shape[1:])

        kv = (to_groups(cache.k), to_groups(cache.v))
        h, aux, (k, v) = self._run(x.astype(self.dtype), positions, kv, cache.lengths, mask)
        k = k.reshape(cache.k.shape)
        v = v.reshape(cache.v.shape)
        return h, aux, KVCache(k, v, cache.lengths + x.shape[1])
