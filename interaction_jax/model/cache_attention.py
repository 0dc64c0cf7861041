"""Built-in cache-attention strategies (signature and registry: `kv_cache.py`).

* "dense": `attention.attention` over every row of the layer, with the module's `impl` (the
  reference; also the path of a model whose attention is a registered kernel).
* "live_window": visits, **per slot**, only the chunks of `live_block` contiguous rows that can
  hold a key visible to that slot's valid queries: the sink and window chunks of its query
  positions when rows do not wrap, or the rows it has written so far in a ring. Each chunk is
  one dynamic slice of the stacked cache (no gather, no per-layer copy) and the softmax is
  online in float32. Slots are mapped one after another (`lax.map`) with their own traced
  loop bounds, so a young session reads its own few chunks whatever the oldest session's age,
  an idle slot reads none, and a slot's result never depends on the other slots. Two shared
  paths skip the per-slot loop's overhead where it saves nothing: when no slot needs more than
  the first chunk, all slots take that chunk in one batched softmax; when the slots need about
  the same number of chunks (`SHARED_LOOP_SLACK`: sessions of similar age), one loop runs over
  chunks [0, most any slot needs) with every slot's chunk in one slice per step. The shared
  paths' chunks hold about `LIVE_BLOCK_BYTES` of keys over all slots together (shorter the more
  slots there are), so a batch of young sessions does not read a long chunk's unused tail.
* "live_window_batched": the same chunks with the slots in one batched loop that runs to the
  largest slot's chunk count (the others masked): equal-age sessions share each loop step. On the
  2-core CPU it is slower than the per-slot loop (`experiments/perf/README.md`); unmeasured elsewhere.
* "live_flat": for a **split cache** (one [B, T, KVH * hd] buffer per layer, which the engine
  allocates for it), a block of few query rows per KV head (at most `FLAT_QUERY_ROWS`: the
  one-position decode calls) reads its layer's buffer whole (its live chunks while it is mostly
  empty), before the block's write, as two matmuls against block-diagonal queries, and attends
  to its own K/V beside it (`flat_before_write`); larger blocks (the input block) run
  "live_window" after the write.
  XLA:CPU contracts a whole buffer at memory speed but copies a slice of a larger one (a chunk,
  a layer of the stack) before a dot, so reading a session's whole ring flat costs less than
  reading its live chunks once the session has filled a part of it (`experiments/perf/README.md`).
  On a stacked cache it is "live_window".
* "batch_invariant": `pallas_kernels.batch_invariant.chunked_attention` with keys gathered in
  absolute-position order from the rows (chunks of `BLOCK_KV` positions, only the live ones):
  bitwise the training forward's rows.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from interaction_jax.model.attention import NEG_INF, attention, make_mask
from interaction_jax.model.kv_cache import CacheView, RowMap, cache_shape, layer_rows, register_cache_attention
from pallas_kernels.batch_invariant import live_chunk_ranges, loop_ranges

LIVE_BLOCK_BYTES = 256 * 1024  # bytes of keys (all KV heads) per chunk of "live_window"
LIVE_BLOCK_RANGE = (512, 4096)  # fewest / most cache rows per chunk
# The shared loop reads B x (most chunks any slot needs) of its chunks; the per-slot loop reads the sum of
# the slots' own counts of its chunks but pays a loop per slot. Shared when its rows are at most this
# many times the per-slot loop's.
SHARED_LOOP_SLACK = 1.25


FLAT_QUERY_ROWS = 8  # "live_flat": query rows per KV head (positions x group) read flat; more run "live_window"
# "live_flat" reads the whole buffer while at least 1/FLAT_MIN_FILL of its rows are in use, else its
# live chunks: on the 2-core CPU a whole-buffer read ran 3-6x the rows per second of chunk reads.
FLAT_MIN_FILL = 4


def flat_before_write(q, k_new, v_new, k, v, layer, view: CacheView, rows: RowMap) -> jax.Array | None:
    """Attention of a few-query block over layer `layer` of a split cache as it is *before* the
    block's write, plus the block's own K/V (`k_new`, `v_new` [B, S, KVH, hd]); None (static) for
    a stacked cache or more than `FLAT_QUERY_ROWS` query rows per KV head.

    The cache part is read one of two ways. A ring (it holds about one attention window) or a
    cache of at most `FLAT_MIN_FILL` chunks is always read whole; a longer "hard" cache is read
    whole while at least one `FLAT_MIN_FILL`-th of its rows hold positions (`lax.cond` per call).
    Whole: the layer's buffer [B, T, KVH*hd] is contracted with block-diagonal queries (row
    (head, group, position) holds the query in its KV head's columns only): one matmul for the
    scores and one for the values, batched over slots, no transpose, slice or reshape of the
    cache; the wasted FLOPs (x KVH) are free where the read is bandwidth-bound. A cache mostly
    empty (a young session under a long "hard" limit) is read in its live chunks instead, as the
    shared loop of "live_window" does. Rows this block writes
    (`view.write_rows`) are masked (their old content is being replaced); the block's own keys are
    visible by position and `view.q_valid`: the keys the post-write read sees. Softmax in float32.
    """
    b, s, h, hd = q.shape
    if not isinstance(k, tuple):
        return None
    kvh = k_new.shape[2]
    g = h // kvh
    if s * g > FLAT_QUERY_ROWS:
        return None
    f32 = jnp.float32
    kl, vl = k[layer], v[layer]  # [B, T, E], or [T, E] for one slot
    t = kl.shape[-2]
    qb = q.reshape(b, s, kvh, g, hd)
    qs = qb * jnp.asarray(hd**-0.5, q.dtype)  # scaled queries for the whole read and the own keys
    written = jnp.zeros((b, t), bool).at[jnp.arange(b)[:, None], view.write_rows].set(True)
    kv_old = jnp.where(written, -1, view.kv_positions)
    old_view = view._replace(kv_positions=kv_old)
    valid = view.q_valid.astype(bool)
    block = min(live_block(b * kvh, hd, kl.dtype.itemsize), t)  # the chunks of a mostly empty cache

    def whole(kl, vl):
        kl, vl = kl.astype(q.dtype), vl.astype(q.dtype)
        eye = jnp.eye(kvh, dtype=q.dtype)
        q_diag = jnp.einsum("bskgd,kj->bkgsjd", qs, eye).reshape(b, kvh * g * s, kvh * hd)
        if kl.ndim == 2:  # one slot: a plain matmul (a size-1 batch dim would make XLA copy the buffer)
            logits = jnp.dot(q_diag[0], kl.T, preferred_element_type=f32)[None]
        else:
            logits = jnp.einsum("bqe,bte->bqt", q_diag, kl, preferred_element_type=f32)
        logits = logits.reshape(b, kvh, g, s, t)
        mask = make_mask(view.q_positions, kv_old, window=rows.window, sinks=rows.sinks,
                         kv_valid=kv_old >= 0)[:, None, None]
        m = jnp.max(jnp.where(mask, logits, NEG_INF), axis=-1)
        pr = jnp.where(mask, jnp.exp(logits - m[..., None]), 0.0)
        pr_flat = pr.reshape(b, kvh * g * s, t).astype(q.dtype)
        if kl.ndim == 2:
            pv = jnp.dot(pr_flat[0], vl, preferred_element_type=f32)[None]
        else:
            pv = jnp.einsum("bqt,bte->bqe", pr_flat, vl, preferred_element_type=f32)
        pv = jnp.einsum("bkgsjd,kj->bkgsd", pv.reshape(b, kvh, g, s, kvh, hd), eye.astype(f32))
        return m, jnp.sum(pr, axis=-1), pv

    def chunks(kl, vl):
        ks = (kl[None] if kl.ndim == 2 else kl).reshape(1, b, t, kvh, hd)
        vs = (vl[None] if vl.ndim == 2 else vl).reshape(1, b, t, kvh, hd)
        _, most = _path_and_shared_chunks(old_view, rows, block, block)
        carry = (jnp.full((b, kvh, g, s), NEG_INF, f32), jnp.zeros((b, kvh, g, s), f32),
                 jnp.zeros((b, kvh, g, s, hd), f32))
        step = functools.partial(_all_slots_chunk, qb, ks, vs, 0, old_view, rows, block)
        return jax.lax.fori_loop(0, most, step, carry)

    if rows.wraps or t <= FLAT_MIN_FILL * block:
        # a ring (about one window of rows) or a cache of a few chunks: whole, without a branch
        m, den, acc = whole(kl, vl)
    else:
        used = jnp.max(rows_in_use(kv_old))
        m, den, acc = jax.lax.cond(used * FLAT_MIN_FILL >= t, whole, chunks, kl, vl)
    # the block's own keys, merged into the online softmax
    own = jnp.einsum("bskgd,bckd->bkgsc", qs, k_new.astype(q.dtype), preferred_element_type=f32)
    own_mask = make_mask(view.q_positions, view.q_positions, window=rows.window, sinks=rows.sinks,
                         kv_valid=valid)[:, None, None]
    m_new = jnp.maximum(m, jnp.max(jnp.where(own_mask, own, NEG_INF), axis=-1))
    pr = jnp.where(own_mask, jnp.exp(own - m_new[..., None]), 0.0)
    alpha = jnp.exp(m - m_new)
    den = alpha * den + jnp.sum(pr, axis=-1)
    acc = alpha[..., None] * acc + jnp.einsum("bkgsc,bckd->bkgsd", pr.astype(q.dtype), v_new.astype(q.dtype),
                                              preferred_element_type=f32)
    out = jnp.where(den[..., None] > 0, acc / jnp.where(den > 0, den, 1.0)[..., None], 0.0)
    return out.transpose(0, 3, 1, 2, 4).reshape(b, s, h, hd).astype(q.dtype)


def live_block(kv_heads: int, head_dim: int, itemsize: int) -> int:
    """Cache rows per "live_window" chunk: about `LIVE_BLOCK_BYTES` of keys, a power of two in
    `LIVE_BLOCK_RANGE`. Why bytes, not rows: slots are visited one after another, so a chunk of a
    narrow model (tiny: 128 B per row) must be long for each loop step to do more than pay its
    own overhead, while a wide one (small: 1 KiB per row) keeps short chunks that skip more."""
    rows = LIVE_BLOCK_BYTES // max(kv_heads * head_dim * itemsize, 1)
    lo, hi = LIVE_BLOCK_RANGE
    return int(min(max(1 << max(rows.bit_length() - 1, 0), lo), hi))


def rows_in_use(kv_positions: jax.Array) -> jax.Array:
    """[B] int32: one past the last cache row holding a position (rows after it are all empty)."""
    t = kv_positions.shape[1]
    return jnp.max(jnp.where(kv_positions >= 0, jnp.arange(1, t + 1, dtype=jnp.int32)[None], 0), axis=1)


def dense(q, k, v, layer, view: CacheView, rows: RowMap, impl: str) -> jax.Array:
    """Every row of the layer through `attention` (mask from the view's positions)."""
    hd = q.shape[-1]
    return attention(q, layer_rows(k, layer, hd).astype(q.dtype), layer_rows(v, layer, hd).astype(q.dtype),
                     q_positions=view.q_positions,
                     kv_positions=view.kv_positions, kv_valid=view.kv_positions >= 0, window=rows.window,
                     sinks=rows.sinks, impl=impl)


def slot_chunk_ranges(q_positions: jax.Array, valid: jax.Array, kv_positions: jax.Array, rows: RowMap,
                      block: int) -> list[tuple]:
    """[(lo, hi), ...] of one slot's `block`-row chunks that can hold a visible key.

    q_positions / valid [S], kv_positions [T] of ONE slot. Rows that do not wrap (row ==
    position): the sink and window chunks of the valid queries' positions. A ring holds about
    one window, so every row written so far: chunks [0, last row in use]. No valid query: none.
    """
    if not rows.wraps:
        return live_chunk_ranges(q_positions, valid, window=rows.window, sinks=rows.sinks, block_kv=block)
    used = rows_in_use(kv_positions[None])[0]
    return [(0, jnp.where(jnp.any(valid), (used + block - 1) // block, 0))]


def live_chunk_counts(view: CacheView, rows: RowMap, t: int, block: int) -> jax.Array:
    """[B] int32: how many chunks of `block` rows "live_window" visits per slot (a measure of its cost)."""
    block = min(block, t)

    def count(qp, valid, kvp):
        return sum(jnp.maximum(hi - lo, 0) for lo, hi in slot_chunk_ranges(qp, valid, kvp, rows, block))

    return jax.vmap(count)(view.q_positions, view.q_valid, view.kv_positions).astype(jnp.int32)


def live_window(q, k, v, layer, view: CacheView, rows: RowMap, impl: str, *, block: int | None = None,
                batched: bool = False) -> jax.Array:
    """Per-slot live-chunk attention over layer `layer` of the stacked cache (module docstring).

    `block`: cache rows per chunk (default `live_block` of the cache's head group and dtype for the
    per-slot loop, and of all slots' head groups together for the shared paths, which read every
    slot's chunk in one slice: their chunks are shorter the more slots there are, so a young
    session's last chunk wastes few rows).
    A last chunk that would run past the cache is moved back (the slice is clamped) and its rows
    already visited are masked. Same result as "dense" to float rounding. `batched`: the slots
    run as one loop (`vmap`) to the most chunks any slot needs, a slot past its own ranges masked
    ("live_window_batched"): fewer, wider loop steps, but a young slot waits for the oldest.
    """
    del impl
    if isinstance(k, tuple):  # a split cache: only this layer's buffer enters the loops and branches
        hd = q.shape[-1]
        k, v, layer = layer_rows(k, layer, hd)[None], layer_rows(v, layer, hd)[None], 0
    b, s, h, hd = q.shape
    t, kvh = k.shape[2], k.shape[3]
    shared = min(block or live_block(b * kvh, hd, k.dtype.itemsize), t)
    block = min(block or live_block(kvh, hd, k.dtype.itemsize), t)
    g = h // kvh

    def one_slot(args):
        qb, q_pos, valid, kv_pos, slot = args  # [S, KVH, G, hd], [S], [S], [T], ()

        def body(c, carry):
            m, den, acc = carry  # [KVH, G, S], same, [KVH, G, S, hd]
            r0 = jnp.minimum(c * block, t - block)  # what dynamic_slice would clamp to, made explicit
            kc = jax.lax.dynamic_slice(k, (layer, slot, r0, 0, 0), (1, 1, block, kvh, hd))[0, 0].astype(q.dtype)
            vc = jax.lax.dynamic_slice(v, (layer, slot, r0, 0, 0), (1, 1, block, kvh, hd))[0, 0].astype(q.dtype)
            fresh = r0 + jnp.arange(block, dtype=jnp.int32) >= c * block  # rows not seen in an earlier chunk
            pos = jnp.where(fresh, jax.lax.dynamic_slice_in_dim(kv_pos, r0, block), -1)
            logits = jnp.einsum("skgd,ckd->kgsc", qb, kc, preferred_element_type=jnp.float32) * (hd**-0.5)
            mask = make_mask(q_pos[None], pos[None], window=rows.window, sinks=rows.sinks, kv_valid=pos[None] >= 0)
            mask = mask[0][None, None]  # [1, 1, S, C]
            logits = jnp.where(mask, logits, NEG_INF)
            m_new = jnp.maximum(m, jnp.max(logits, axis=-1))
            pr = jnp.where(mask, jnp.exp(logits - m_new[..., None]), 0.0)
            alpha = jnp.exp(m - m_new)
            pv = jnp.einsum("kgsc,ckd->kgsd", pr.astype(vc.dtype), vc, preferred_element_type=jnp.float32)
            return m_new, alpha * den + jnp.sum(pr, axis=-1), alpha[..., None] * acc + pv

        init = (jnp.full((kvh, g, s), NEG_INF, jnp.float32), jnp.zeros((kvh, g, s), jnp.float32),
                jnp.zeros((kvh, g, s, hd), jnp.float32))
        _, den, acc = loop_ranges(slot_chunk_ranges(q_pos, valid, kv_pos, rows, block), body, init)
        out = jnp.where(den[..., None] > 0, acc / jnp.where(den > 0, den, 1.0)[..., None], 0.0)
        return out.transpose(2, 0, 1, 3).reshape(s, h, hd)

    xs = (q.reshape(b, s, kvh, g, hd), view.q_positions, view.q_valid.astype(bool), view.kv_positions,
          jnp.arange(b, dtype=jnp.int32))
    if batched:
        return jax.vmap(one_slot)(xs).astype(q.dtype)
    if t <= shared:  # one chunk holds the whole cache: no loop to save
        return _first_chunk(q, k, v, layer, view, rows, shared).astype(q.dtype)
    path, most = _path_and_shared_chunks(view, rows, block, shared)
    return jax.lax.switch(path,
                          [lambda: _first_chunk(q, k, v, layer, view, rows, shared),
                           lambda: _shared_chunks(q, k, v, layer, view, rows, shared, num_chunks=most),
                           lambda: jax.lax.map(one_slot, xs)]).astype(q.dtype)


def _slot_extents(view: CacheView, rows: RowMap, block: int) -> tuple[jax.Array, jax.Array]:
    """([B], [B]) int32: per slot, the chunks it visits and one past the last chunk it needs (0 when idle)."""

    def one(qp, valid, kvp):
        ranges = slot_chunk_ranges(qp, valid, kvp, rows, block)
        count = sum(jnp.maximum(hi - lo, 0) for lo, hi in ranges)
        end = functools.reduce(jnp.maximum, [jnp.where(hi > lo, hi, 0) for lo, hi in ranges])
        return jnp.asarray(count, jnp.int32), jnp.asarray(end, jnp.int32)

    return jax.vmap(one)(view.q_positions, view.q_valid.astype(bool), view.kv_positions)


def live_path(view: CacheView, rows: RowMap, block: int, shared_block: int | None = None) -> jax.Array:
    """() int32: the path "live_window" takes: 0 every slot within the first `shared_block` rows
    (young sessions, idle slots), 1 one shared loop of `shared_block`-row chunks over [0, most
    needed) (slots of similar age), 2 the per-slot loop of `block`-row chunks (ages far apart: a
    young slot does not pay for an old one). Shared when the rows it reads are at most
    `SHARED_LOOP_SLACK` times the rows the per-slot loop reads."""
    return _path_and_shared_chunks(view, rows, block, shared_block or block)[0]


def _path_and_shared_chunks(view: CacheView, rows: RowMap, block: int,
                            shared_block: int) -> tuple[jax.Array, jax.Array]:
    """(`live_path`, the most `shared_block`-row chunks any slot needs: the shared loop's length)."""
    counts, ends = _slot_extents(view, rows, block)
    if shared_block != block:
        _, ends = _slot_extents(view, rows, shared_block)
    most = jnp.max(ends)
    shared = counts.shape[0] * most * shared_block <= SHARED_LOOP_SLACK * jnp.sum(counts) * block
    return jnp.where(most <= 1, 0, jnp.where(shared, 1, 2)).astype(jnp.int32), most


def _first_chunk_suffices(view: CacheView, rows: RowMap, block: int) -> jax.Array:
    """() bool: every slot's live chunks are at most the first one (young sessions, idle slots)."""
    return live_path(view, rows, block) == 0


def _all_slots_chunk(qb, k, v, layer, view: CacheView, rows: RowMap, block: int, c, carry):
    """One online-softmax step of every slot over its chunk `c` (rows [c*block, +block) of each slot,
    one slice; a last chunk past the cache is moved back and its rows already visited masked)."""
    b, s, kvh, g, hd = qb.shape
    t = k.shape[2]
    m, den, acc = carry  # [B, KVH, G, S], same, [B, KVH, G, S, hd]
    r0 = jnp.minimum(c * block, t - block)
    kc = jax.lax.dynamic_slice(k, (layer, 0, r0, 0, 0), (1, b, block, kvh, hd))[0].astype(qb.dtype)
    vc = jax.lax.dynamic_slice(v, (layer, 0, r0, 0, 0), (1, b, block, kvh, hd))[0].astype(qb.dtype)
    fresh = r0 + jnp.arange(block, dtype=jnp.int32) >= c * block
    pos = jnp.where(fresh[None], jax.lax.dynamic_slice_in_dim(view.kv_positions, r0, block, axis=1), -1)
    logits = jnp.einsum("bskgd,bckd->bkgsc", qb, kc, preferred_element_type=jnp.float32) * (hd**-0.5)
    mask = make_mask(view.q_positions, pos, window=rows.window, sinks=rows.sinks, kv_valid=pos >= 0)
    mask = (mask & jnp.any(view.q_valid.astype(bool), axis=1)[:, None, None])[:, None, None]  # [B, 1, 1, S, C]
    logits = jnp.where(mask, logits, NEG_INF)
    m_new = jnp.maximum(m, jnp.max(logits, axis=-1))
    pr = jnp.where(mask, jnp.exp(logits - m_new[..., None]), 0.0)
    alpha = jnp.exp(m - m_new)
    pv = jnp.einsum("bkgsc,bckd->bkgsd", pr.astype(vc.dtype), vc, preferred_element_type=jnp.float32)
    return m_new, alpha * den + jnp.sum(pr, axis=-1), alpha[..., None] * acc + pv


def _shared_chunks(q, k, v, layer, view: CacheView, rows: RowMap, block: int, num_chunks) -> jax.Array:
    """Every slot through chunks [0, num_chunks) in one loop (the most any slot needs, or 1),
    a slot's rows outside its live ranges masked: the old engine's batched shape, no per-slot
    loop. Same result as the per-slot loop to float rounding; a slot without a valid query gets zeros."""
    b, s, h, hd = q.shape
    kvh = k.shape[3]
    g = h // kvh
    qb = q.reshape(b, s, kvh, g, hd)
    carry = (jnp.full((b, kvh, g, s), NEG_INF, jnp.float32), jnp.zeros((b, kvh, g, s), jnp.float32),
             jnp.zeros((b, kvh, g, s, hd), jnp.float32))
    step = functools.partial(_all_slots_chunk, qb, k, v, layer, view, rows, block)
    if isinstance(num_chunks, int) and num_chunks == 1:
        carry = step(0, carry)  # static: no loop at all
    else:
        carry = jax.lax.fori_loop(0, num_chunks, step, carry)
    _, den, acc = carry
    out = jnp.where(den[..., None] > 0, acc / jnp.where(den > 0, den, 1.0)[..., None], 0.0)
    return out.transpose(0, 3, 1, 2, 4).reshape(b, s, h, hd)


def _first_chunk(q, k, v, layer, view: CacheView, rows: RowMap, block: int) -> jax.Array:
    """The "live_window" path when no slot needs more than rows [0, block): every slot in one batched
    softmax over that static slice, no loop."""
    return _shared_chunks(q, k, v, layer, view, rows, block, num_chunks=1)


def batch_invariant(q, k, v, layer, view: CacheView, rows: RowMap, impl: str) -> jax.Array:
    """Chunks of absolute positions gathered from the rows, in order (bitwise the training rows)."""
    del impl
    from pallas_kernels import batch_invariant as bi

    block, t = bi.BLOCK_KV, cache_shape(k)[2]

    def chunk(c, b):
        p = c * block + jnp.arange(block, dtype=jnp.int32)
        r = jnp.clip(rows.position_rows(p), 0, t - 1)  # a row that does not hold p counts as no key
        if isinstance(k, tuple):  # a split cache: the layer's buffer as [B, T, KVH, hd] (a reshape)
            k_l, v_l = layer_rows(k, layer, q.shape[-1]), layer_rows(v, layer, q.shape[-1])
            kc, vc = k_l[b, r].astype(q.dtype), v_l[b, r].astype(q.dtype)
        else:
            kc, vc = k[layer, b, r].astype(q.dtype), v[layer, b, r].astype(q.dtype)
        return kc, vc, jnp.where(view.kv_positions[b, r] == p, p, -1)

    ranges = functools.partial(live_chunk_ranges, window=rows.window, sinks=rows.sinks, block_kv=block)
    return bi.chunked_attention(q, view.q_positions, chunk, ranges, window=rows.window, sinks=rows.sinks,
                                q_valid=view.q_valid)


register_cache_attention("dense", dense)
register_cache_attention("live_window", live_window)
register_cache_attention("live_window_batched", functools.partial(live_window, batched=True))
register_cache_attention("batch_invariant", batch_invariant)
_live_flat = functools.partial(live_window)
_live_flat.before_write = flat_before_write
_live_flat.split_cache = True
register_cache_attention("live_flat", _live_flat)
