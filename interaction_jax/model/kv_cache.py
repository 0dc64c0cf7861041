"""The KV cache a block of new positions runs against, and the registry of cache-attention strategies.

Training and streaming share one `Block` / `Attention` code path (`attention.py`,
`transformer.py`). With a cache, `Attention` projects the block, writes its K/V into the
stacked cache and hands the queries to a *strategy*: how to attend over the cache is the only
thing that differs between the model's own `step`, the streaming engine's ring cache, the
Pallas decode kernel and the bitwise batch-invariant mode. A change to a block is therefore
made once and served at once; a new way to read the cache is one registered function.

    BlockCache(k, v, view, layer, rows, strategy)
      k, v      [layers, B, T, kv_heads, head_dim]  the whole cache, stacked over layers (it rides
                in the layer loop's carry and only the new rows are scattered in, so a donated
                cache is updated in place), or a tuple of one buffer per layer with flat rows,
                [B, T, kv_heads * head_dim] ([T, kv_heads * head_dim] for one slot): the engine's
                split cache, for `split_cache` strategies (XLA:CPU contracts a whole buffer at
                memory speed where it copies a slice of a stack, or a buffer whose size-1 slot dim
                it squeezes, first); `layer_rows(k, layer, head_dim)` is a layer's
                [B, T, kv_heads, head_dim] either way
      view      CacheView: where this block writes and which positions every row holds
      layer     the layer a block reads / writes (set by the layer loop; static or traced)
      rows      RowMap (static): window, sinks, whether rows wrap (a ring) and position -> row
      strategy  (static) the registered name of the cache attention

A strategy is `fn(q, k, v, layer, view, rows, impl) -> out`: q [B, S, H, hd] (RoPE applied),
k / v the stacked cache *after* this block's write, `impl` the module's `attention_impl`; out
[B, S, H, hd]. Key j of slot b is visible to query i iff kv_positions[b, j] >= 0 (written),
kv_positions[b, j] <= q_positions[b, i] and the window / sinks rule of `attention.py` holds.
A strategy may also carry `before_write(q, k_new, v_new, k, v, layer, view, rows) -> out | None`:
attention over the cache *before* this block's write (the rows this block writes excluded) and
over the block's own K/V, merged; `Attention` then writes the block after the read (ordered by a
data dependence, so a donated buffer read whole can be updated in place). It returns None
(statically) when its shapes do not suit it, and the strategy itself runs after the write.
Strategies with `split_cache = True` ask the engine for a split cache.
Built-ins ("dense", "live_window", "live_window_batched", "live_flat", "batch_invariant":
`cache_attention.py`; "pallas", "pallas_interpret": `kernels.py`) load on first use;
`register_cache_attention` adds more.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from typing import NamedTuple, Protocol

import jax
import jax.numpy as jnp
from flax import struct


class RowMap(Protocol):
    """How cache rows relate to positions (`inference.cache.ContextPolicy` is one)."""

    window: int  # attention window in positions (0 = full causal)
    sinks: int  # leading positions visible forever

    @property
    def wraps(self) -> bool:
        """True for a ring (a row holds different positions over time), False when row == position."""
        ...

    def position_rows(self, p: jax.Array) -> jax.Array:
        """The row that holds absolute position p."""
        ...


@dataclasses.dataclass(frozen=True)
class LinearRows:
    """Row r holds position r (the model's own `KVCache`: one row per position of a slot)."""

    window: int = 0
    sinks: int = 0
    wraps: bool = False

    def position_rows(self, p: jax.Array) -> jax.Array:
        return jnp.asarray(p, jnp.int32)


class CacheView(NamedTuple):
    """Per-block arrays the caller builds: where K/V go and what the mask sees."""

    write_rows: jax.Array  # [B, S] int32 rows the block's K/V are written to
    q_positions: jax.Array  # [B, S] int32 positions of the queries (for the mask)
    kv_positions: jax.Array  # [B, T] int32 position each row holds after the write (-1: empty)
    q_valid: jax.Array  # [B, S] bool; False rows (idle slots) may be skipped, their output is unused


def linear_view(lengths: jax.Array, size: int, rows: int) -> CacheView:
    """The view of a block of `size` positions appended at `lengths` [B] of a linear cache."""
    q = lengths[:, None] + jnp.arange(size, dtype=jnp.int32)[None, :]
    r = jnp.arange(rows, dtype=jnp.int32)[None, :]
    kv = jnp.where(r < (lengths + size)[:, None], r, -1)
    return CacheView(q.astype(jnp.int32), q.astype(jnp.int32), kv, jnp.ones(q.shape, bool))


@struct.dataclass
class BlockCache:
    """The cache a block runs against (see the module docstring); a pytree of its arrays."""

    k: jax.Array
    v: jax.Array
    view: CacheView
    layer: int | jax.Array = 0
    rows: RowMap = struct.field(pytree_node=False, default=LinearRows())
    strategy: str = struct.field(pytree_node=False, default="dense")


def write_rows(cache, layer: int | jax.Array, rows: jax.Array, new: jax.Array):
    """cache [layers, B, T, ...] (or a split cache, `layer` static) with new [B, S, kv_heads,
    head_dim] scattered to rows [B, S] of `layer`."""
    b_idx = jnp.arange(rows.shape[0])[:, None]
    if isinstance(cache, tuple):
        buf = cache[layer]
        flat = new.reshape(new.shape[:2] + (-1,)).astype(buf.dtype)
        buf = buf.at[rows[0]].set(flat[0]) if buf.ndim == 2 else buf.at[b_idx, rows].set(flat)
        return cache[:layer] + (buf,) + cache[layer + 1:]
    return cache.at[layer, b_idx, rows].set(new.astype(cache.dtype))


def layer_rows(cache, layer: int | jax.Array, head_dim: int) -> jax.Array:
    """[B, T, kv_heads, head_dim]: layer `layer` of a stacked or split cache (a reshape, no copy)."""
    if isinstance(cache, tuple):
        buf = cache[layer]
        buf = buf[None] if buf.ndim == 2 else buf
        return buf.reshape(buf.shape[:2] + (buf.shape[2] // head_dim, head_dim))
    return cache[layer]


def cache_shape(cache) -> tuple[int, ...]:
    """[layers, B, T, ...] of a stacked cache ([..., kv_heads, head_dim]) or a split one
    ([..., kv_heads * head_dim]): the product of the dims after T is a row's width either way."""
    if isinstance(cache, tuple):
        shape = tuple(cache[0].shape)
        return (len(cache),) + ((1,) + shape if len(shape) == 2 else shape)
    return tuple(cache.shape)


def cache_dtype(cache):
    return cache[0].dtype if isinstance(cache, tuple) else cache.dtype


def wants_split_cache(name: str) -> bool:
    """Whether strategy `name` reads a split cache, one buffer per layer (its `split_cache` attribute)."""
    return bool(getattr(cache_attention_fn(name), "split_cache", False))


CacheAttentionFn = Callable[..., jax.Array]
_STRATEGIES: dict[str, CacheAttentionFn] = {}
_BUILTINS = "interaction_jax.model.cache_attention"
_KERNELS = "interaction_jax.model.kernels"  # imports Pallas: only for names starting with "pallas"
# attention impls that are plain XLA: the live-window strategy reads the cache the same way
PURE_XLA_IMPLS = ("xla", "xla_causal_blocks")


def register_cache_attention(name: str, fn: CacheAttentionFn, *, overwrite: bool = False) -> None:
    """Makes `fn(q, k, v, layer, view, rows, impl)` selectable by name (`BlockCache.strategy`,
    `inference.decode_attention`)."""
    if name in _STRATEGIES and not overwrite:
        raise ValueError(f"cache attention {name!r} is already registered")
    _STRATEGIES[name] = fn


def cache_attention_names() -> tuple[str, ...]:
    """Every registered strategy name (imports the Pallas ones too)."""
    importlib.import_module(_BUILTINS)
    importlib.import_module(_KERNELS)
    return tuple(sorted(_STRATEGIES))


def cache_attention_fn(name: str) -> CacheAttentionFn:
    """The strategy registered as `name` (built-ins are imported on first use)."""
    if name not in _STRATEGIES:
        importlib.import_module(_BUILTINS)
    if name not in _STRATEGIES and name.startswith("pallas"):
        importlib.import_module(_KERNELS)
    if name not in _STRATEGIES:
        raise ValueError(f"unknown cache attention {name!r}; available: {cache_attention_names()}")
    return _STRATEGIES[name]


def resolve_strategy(requested: str, *, batch_invariant: bool, impl: str) -> str:
    """The strategy a module runs for `requested`: a batch-invariant model always reads its cache
    with "batch_invariant" (the bitwise claim needs it); "live_window" is pure XLA, so a model
    whose `attention_impl` is a registered kernel reads the whole cache with "dense" (its kernel)."""
    if batch_invariant:
        return "batch_invariant"
    if requested in ("live_window", "live_window_batched", "live_flat") and impl not in PURE_XLA_IMPLS:
        return "dense"
    cache_attention_fn(requested)  # a clear error for an unknown name
    return requested
