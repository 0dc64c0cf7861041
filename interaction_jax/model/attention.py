"""Grouped-query attention with RoPE, causal / sliding-window+sinks masks, and a cached step.

Two layers:

* `attention(q, k, v, *, mask=None | q_positions/kv_positions/window/sinks/segment ids, impl="xla")`
  — a pure function over [B, S, H, hd] queries and [B, T, KVH, hd] keys/values. `impl` picks the
  backend (`c.model.attention_impl`); "xla" is the einsum reference and a Pallas kernel can
  register itself with `register_attention_impl` without touching the model. An impl receives
  an `AttentionMask`: the mask's *structure* (positions, window, sinks, segment ids, validity),
  so a kernel can skip blocks and never build the dense [B, S, T] mask; `AttentionMask.dense()`
  gives it to the impls that want it.
* `Attention` — the module: projections, RoPE at the packed `positions`, and one `__call__`
  for training (the sequence over itself) and streaming (a block of new positions against an
  explicit cache pytree, `kv_cache.BlockCache`, gemma-sampler style: the cache comes in and goes
  out). How a block attends over the cache is a registered strategy (`kv_cache.py`,
  `cache_attention.py`); the projections, RoPE and output projection are shared.

Mask semantics (shared by both paths): key j is visible from query i iff
  kv_pos[j] <= q_pos[i]  and  (window == 0  or  q_pos[i] - kv_pos[j] < window  or  kv_pos[j] < sinks)
and, when segment ids are given, q_seg[i] == kv_seg[j] (packed sequences), and, for the cache,
j is a written entry. `window` counts the query itself; the first `sinks`
positions stay visible forever (attention sinks, Xiao et al. 2023).

`batch_invariant=True` replaces the projections with fixed-tile matmuls and the attention with
`pallas_kernels.batch_invariant.chunked_attention` (keys in chunks of fixed absolute positions,
fixed reduction order), whatever `impl` says: a query row's output is then bitwise independent
of the batch, the number of queries and the cache extent (the streaming engine relies on it).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from interaction_jax.model.kv_cache import (
    BlockCache,
    LinearRows,
    cache_attention_fn,
    linear_view,
    resolve_strategy,
    write_rows,
)
from interaction_jax.model.layers import fan_in_init, matmul, param

NEG_INF = -1e30


def rope(x: jax.Array, positions: jax.Array, theta: float) -> jax.Array:
    """Rotary embedding (half-split convention) of x [B, S, H, hd] at positions [B, S]."""
    hd = x.shape[-1]
    half = hd // 2
    freqs = theta ** (-jnp.arange(half, dtype=jnp.float32) / half)
    angles = positions.astype(jnp.float32)[..., None] * freqs  # [B, S, half]
    sin, cos = jnp.sin(angles)[:, :, None, :], jnp.cos(angles)[:, :, None, :]
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x.dtype)


def make_mask(
    q_positions: jax.Array,
    kv_positions: jax.Array,
    *,
    window: int = 0,
    sinks: int = 0,
    kv_valid: jax.Array | None = None,
    q_segment_ids: jax.Array | None = None,
    kv_segment_ids: jax.Array | None = None,
) -> jax.Array:
    """Boolean mask [B, S, T] from positions [B, S] / [B, T] (see the module docstring)."""
    q = q_positions[:, :, None]
    k = kv_positions[:, None, :]
    mask = k <= q
    if window:
        mask &= (q - k < window) | (k < sinks)
    if kv_valid is not None:
        mask &= kv_valid[:, None, :]
    if q_segment_ids is not None:
        mask &= q_segment_ids[:, :, None] == kv_segment_ids[:, None, :]
    return mask


@dataclasses.dataclass(frozen=True)
class AttentionMask:
    """What an attention impl is told about visibility: the structure, or a caller's dense mask.

    Structured (`dense_mask` None): positions [B, S] / [B, T], static `window` / `sinks`,
    optional `kv_valid` [B, T] and segment ids [B, S] / [B, T] (>= 0). `ordered` promises that
    queries and keys are the same sequence and positions strictly increase with the index
    (within a segment), as in every packed training window: a kernel may then bound its loops
    by index (skip the blocks above the diagonal / left of the window). Kept as structure so a
    kernel never needs the [B, S, T] mask; `dense()` builds it for the impls that do.
    """

    q_positions: jax.Array | None = None
    kv_positions: jax.Array | None = None
    window: int = 0
    sinks: int = 0
    kv_valid: jax.Array | None = None
    q_segment_ids: jax.Array | None = None
    kv_segment_ids: jax.Array | None = None
    ordered: bool = False
    dense_mask: jax.Array | None = None

    def dense(self) -> jax.Array:
        """The boolean [B, S, T] mask (built here unless the caller gave one)."""
        if self.dense_mask is not None:
            return self.dense_mask
        return make_mask(self.q_positions, self.kv_positions, window=self.window, sinks=self.sinks,
                         kv_valid=self.kv_valid, q_segment_ids=self.q_segment_ids,
                         kv_segment_ids=self.kv_segment_ids)


def xla_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
    """Reference GQA: q [B,S,H,hd], k/v [B,T,KVH,hd], mask [B,S,T] -> [B,S,H,hd]; softmax in f32."""
    b, s, h, hd = q.shape
    kvh = k.shape[2]
    if h % kvh:
        raise ValueError(f"attention: num_heads={h} is not a multiple of num_kv_heads={kvh}")
    qg = q.reshape(b, s, kvh, h // kvh, hd)
    logits = jnp.einsum("bskgd,btkd->bkgst", qg, k, preferred_element_type=jnp.float32)
    logits = logits * (hd**-0.5)
    logits = jnp.where(mask[:, None, None, :, :], logits, NEG_INF)
    probs = jax.nn.softmax(logits, axis=-1)
    # A row with no visible key (cannot happen for causal rows) would be uniform; zero it.
    probs = jnp.where(jnp.any(mask, axis=-1)[:, None, None, :, None], probs, 0.0)
    out = jnp.einsum("bkgst,btkd->bskgd", probs.astype(v.dtype), v, preferred_element_type=jnp.float32)
    return out.reshape(b, s, h, hd).astype(q.dtype)


CAUSAL_BLOCK = 128


def causal_block_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, *, block: int = CAUSAL_BLOCK
) -> jax.Array:
    """`xla_attention` for self-attention over a sequence (S == T), skipping the key blocks
    above the diagonal: query block [lo, hi) reads keys [0, hi) only.

    Exact when no query sees a key at a later index (`mask[:, i, j]` False for j > i), which
    holds for the causal / window masks of a sequence whose positions increase with index
    (every packed training window). About (n+1)/2n of the dense work for n blocks; on XLA:CPU
    the [B, KVH, G, S, D] layout also runs the matmuls as plain batched GEMMs. Other shapes
    (a cached block, S != T) take `xla_attention`.
    """
    b, s, h, hd = q.shape
    if s != k.shape[1] or s <= block:
        return xla_attention(q, k, v, mask)
    kvh = k.shape[2]
    if h % kvh:
        raise ValueError(f"attention: num_heads={h} is not a multiple of num_kv_heads={kvh}")
    qt = jnp.transpose(q.reshape(b, s, kvh, h // kvh, hd), (0, 2, 3, 1, 4))  # [B, KVH, G, S, D]
    kt = jnp.transpose(k, (0, 2, 3, 1))  # [B, KVH, D, T]
    vt = jnp.transpose(v, (0, 2, 1, 3))  # [B, KVH, T, D]
    outs = []
    for lo in range(0, s, block):
        hi = min(s, lo + block)
        logits = jnp.einsum("bkgsd,bkdt->bkgst", qt[:, :, :, lo:hi], kt[..., :hi], preferred_element_type=jnp.float32)
        logits = logits * (hd**-0.5)
        m = mask[:, None, None, lo:hi, :hi]
        probs = jax.nn.softmax(jnp.where(m, logits, NEG_INF), axis=-1)
        probs = jnp.where(jnp.any(m, axis=-1, keepdims=True), probs, 0.0)
        outs.append(
            jnp.einsum("bkgst,bktd->bkgsd", probs.astype(v.dtype), vt[:, :, :hi], preferred_element_type=jnp.float32)
        )
    out = jnp.concatenate(outs, axis=3)  # [B, KVH, G, S, D]
    return jnp.transpose(out, (0, 3, 1, 2, 4)).reshape(b, s, h, hd).astype(q.dtype)


AttentionFn = Callable[[jax.Array, jax.Array, jax.Array, AttentionMask], jax.Array]
_IMPLS: dict[str, AttentionFn] = {
    "xla": lambda q, k, v, mask: xla_attention(q, k, v, mask.dense()),
    "xla_causal_blocks": lambda q, k, v, mask: causal_block_attention(q, k, v, mask.dense()),
}


def register_attention_impl(name: str, fn: AttentionFn, *, overwrite: bool = False) -> None:
    """Makes `fn(q, k, v, mask: AttentionMask)` selectable as `c.model.attention_impl = name`."""
    if name in _IMPLS and not overwrite:
        raise ValueError(f"attention impl {name!r} is already registered")
    _IMPLS[name] = fn


def attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    mask: jax.Array | None = None,
    q_positions: jax.Array | None = None,
    kv_positions: jax.Array | None = None,
    kv_valid: jax.Array | None = None,
    window: int = 0,
    sinks: int = 0,
    q_segment_ids: jax.Array | None = None,
    kv_segment_ids: jax.Array | None = None,
    ordered: bool = False,
    impl: str = "xla",
) -> jax.Array:
    """Dispatching attention: give either a dense `mask` [B,S,T] or the structure (positions,
    window, sinks, `kv_valid`, segment ids, `ordered`: `AttentionMask`) it follows from."""
    if mask is not None:
        spec = AttentionMask(dense_mask=mask)
    elif q_positions is None or kv_positions is None:
        raise ValueError("attention: pass `mask` or both `q_positions` and `kv_positions`")
    elif (q_segment_ids is None) != (kv_segment_ids is None):
        raise ValueError("attention: pass both `q_segment_ids` and `kv_segment_ids`, or neither")
    else:
        spec = AttentionMask(q_positions, kv_positions, int(window), int(sinks), kv_valid, q_segment_ids,
                             kv_segment_ids, bool(ordered))
    if impl not in _IMPLS and impl.startswith("pallas"):
        import interaction_jax.model.kernels  # noqa: F401  (registers the kernel impls; lazy: no Pallas import otherwise)
    if impl not in _IMPLS:
        raise ValueError(f"unknown attention impl {impl!r}; available: {sorted(_IMPLS)}")
    return _IMPLS[impl](q, k, v, spec)


class Attention(nnx.Module):
    """GQA self-attention: q/k/v projections, RoPE, masked attention, output projection."""

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        num_kv_heads: int,
        head_dim: int,
        *,
        rope_theta: float = 10_000.0,
        window: int = 0,
        sinks: int = 0,
        impl: str = "xla",
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        batch_invariant: bool = False,
        rngs: nnx.Rngs,
    ):
        if num_heads % num_kv_heads:
            raise ValueError(f"num_heads={num_heads} must be a multiple of num_kv_heads={num_kv_heads}")
        self.rope_theta = float(rope_theta)
        self.window = int(window)
        self.sinks = int(sinks)
        self.impl = impl
        self.dtype = dtype
        self.batch_invariant = bool(batch_invariant)
        init_in = fan_in_init(d_model)
        self.wq = param(rngs, init_in, (d_model, num_heads, head_dim), ("embed", "heads", "head_dim"), param_dtype)
        self.wk = param(
            rngs, init_in, (d_model, num_kv_heads, head_dim), ("embed", "kv_heads", "head_dim"), param_dtype
        )
        self.wv = param(
            rngs, init_in, (d_model, num_kv_heads, head_dim), ("embed", "kv_heads", "head_dim"), param_dtype
        )
        self.wo = param(
            rngs,
            fan_in_init(num_heads * head_dim),
            (num_heads, head_dim, d_model),
            ("heads", "head_dim", "embed"),
            param_dtype,
        )

    def _proj(self, x: jax.Array, w: nnx.Param) -> jax.Array:
        """x [B, S, D] @ w [D, H, hd] -> [B, S, H, hd] as one 2-D matmul (`matmul`: why 2-D)."""
        w = w[...].astype(self.dtype)
        return matmul(x, w.reshape(w.shape[0], -1), self.batch_invariant).reshape(x.shape[:-1] + w.shape[1:])

    def _qkv(self, x: jax.Array, positions: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        x = x.astype(self.dtype)
        q, k, v = self._proj(x, self.wq), self._proj(x, self.wk), self._proj(x, self.wv)
        return rope(q, positions, self.rope_theta), rope(k, positions, self.rope_theta), v

    def _out(self, o: jax.Array) -> jax.Array:
        wo = self.wo[...].astype(self.dtype)
        o = (o.astype(self.dtype) if self.batch_invariant else o).reshape(o.shape[:-2] + (-1,))
        return matmul(o, wo.reshape(-1, wo.shape[-1]), self.batch_invariant)

    def _sequence(self, q: jax.Array, k: jax.Array, v: jax.Array, positions: jax.Array) -> jax.Array:
        """Causal (window / sinks) attention of a whole sequence over itself (teacher forcing)."""
        if self.batch_invariant:
            from pallas_kernels import batch_invariant as bi

            return bi.attention_sequence(q, k, v, positions, positions, window=self.window, sinks=self.sinks)
        return attention(q, k, v, q_positions=positions, kv_positions=positions, window=self.window,
                         sinks=self.sinks, ordered=True, impl=self.impl)

    def __call__(
        self, x: jax.Array, positions: jax.Array, cache: BlockCache | None = None
    ) -> jax.Array | tuple[jax.Array, BlockCache]:
        """x [B, S, D] at packed `positions` [B, S] (RoPE).

        Without a cache: causal attention over x itself, returns y [B, S, D]. With a cache: the
        block's K/V are written to `cache.view.write_rows` of layer `cache.layer` and the queries
        attend over the cache with the strategy `cache.strategy` (`kv_cache.py`); returns
        (y, cache with the new K/V). Writing past the cache is the caller's error to prevent.
        """
        q, k, v = self._qkv(x, positions)
        if cache is None:
            return self._out(self._sequence(q, k, v, positions))
        if self.batch_invariant and cache.strategy != "batch_invariant":
            raise ValueError(f"a batch-invariant model reads its cache with 'batch_invariant', not {cache.strategy!r}")
        fn = cache_attention_fn(cache.strategy)
        before_write = getattr(fn, "before_write", None)
        o = None
        if before_write is not None:
            with jax.named_scope("cache_read"):
                o = before_write(q, k, v, cache.k, cache.v, cache.layer, cache.view, cache.rows)
        if o is not None:
            # The write reads the output, so XLA runs it after the read and updates the (donated)
            # buffer in place; a write it could schedule first would make it copy the buffer.
            # `o` is finite (a convex combination of V rows, or zeros), so `after` is exactly 0.
            after = (0.0 * jnp.sum(o)).astype(k.dtype)
            k, v = k + after, v + after
        with jax.named_scope("kv_write"):  # scopes label the compiled ops for profiles
            kc = write_rows(cache.k, cache.layer, cache.view.write_rows, k)
            vc = write_rows(cache.v, cache.layer, cache.view.write_rows, v)
        if o is None:
            with jax.named_scope("cache_read"):
                o = fn(q, kc, vc, cache.layer, cache.view, cache.rows, self.impl)
        return self._out(o), cache.replace(k=kc, v=vc)

    def cached(
        self,
        x: jax.Array,
        positions: jax.Array,
        k_cache: jax.Array,
        v_cache: jax.Array,
        lengths: jax.Array,
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """`__call__` against a one-layer linear cache k/v [B, max_len, KVH, hd]: the block is
        appended at rows [lengths[b], lengths[b] + S) of slot b and masked on row indices (row =
        sequence index of the slot). Returns (y, new k_cache, new v_cache); the caller advances
        `lengths`."""
        rows = LinearRows(self.window, self.sinks)
        strategy = resolve_strategy("dense", batch_invariant=self.batch_invariant, impl=self.impl)
        view = linear_view(lengths, x.shape[1], k_cache.shape[1])
        y, cache = self(x, positions, BlockCache(k_cache[None], v_cache[None], view, 0, rows, strategy))
        return y, cache.k[0], cache.v[0]
