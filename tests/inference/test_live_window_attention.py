"""The "live_window" cache attention (per-slot row chunks of the stacked cache; slot by slot and
batched) against `jax.nn.dot_product_attention` on the same rows with the mask written out from
the positions: a "hard" cache whose last chunk is clamped, a wrapped "sliding" ring with sinks,
two slots of different lengths, a traced layer, each of the three paths forced; a young slot
visits only its own chunks, and the path follows the slots' ages."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from interaction_jax.inference.cache import ContextPolicy
from interaction_jax.model import cache_attention
from interaction_jax.model.cache_attention import (
    _first_chunk_suffices,
    live_block,
    live_chunk_counts,
    live_path,
    live_window,
)
from interaction_jax.model.kv_cache import CacheView

L, KVH, H, HD = 3, 2, 4, 16


def _reference(q, q_pos, k, v, kv_pos, window, sinks):
    """Dense attention over every row; a row is visible iff written, causal and in window / a sink."""
    qp, kp = q_pos[:, :, None], kv_pos[:, None, :]
    mask = (kp >= 0) & (kp <= qp)
    if window:
        mask &= (qp - kp < window) | (kp < sinks)
    rep = H // KVH
    return jax.nn.dot_product_attention(q, jnp.repeat(k, rep, axis=2), jnp.repeat(v, rep, axis=2),
                                        mask=mask[:, None], implementation="xla")


@pytest.mark.parametrize(
    "policy, lengths",
    [
        (ContextPolicy("hard", 0, 0, 300, 5, 60), (123, 297)),  # rows 305: the last 64-row chunk is clamped
        (ContextPolicy("hard", 0, 0, 300, 5, 60), (12, 64)),  # both slots in the first chunk: one batched softmax
        (ContextPolicy("hard", 4, 50, 296, 5, 60), (200, 290)),  # model window + sinks, hard (row == position)
        (ContextPolicy("sliding", 6, 40, 44, 5, None), (250, 17)),  # ring wrapped several times / barely used
    ],
)
@pytest.mark.parametrize("path", ["per_slot", "shared", "batched"])
def test_live_window_attention_matches_dense(policy, lengths, path, monkeypatch):
    """`path`: the per-slot loop (the shared loop never cheap enough), the shared loop (always), or
    the vmapped "live_window_batched"; a case whose slots fit in the first chunk takes that path."""
    monkeypatch.setattr(cache_attention, "SHARED_LOOP_SLACK", 1e9 if path == "shared" else 0.0)
    batched = path == "batched"
    s, b = 5, 2
    rng = np.random.RandomState(0)
    rows = policy.rows
    k_all = jnp.asarray(rng.randn(L, b, rows, KVH, HD), jnp.float32)
    v_all = jnp.asarray(rng.randn(L, b, rows, KVH, HD), jnp.float32)
    length = jnp.asarray(lengths, jnp.int32)
    q = jnp.asarray(rng.randn(b, s, H, HD), jnp.float32)
    q_pos = length[:, None] - s + jnp.arange(s)[None]
    kv_pos = policy.row_positions(length)
    valid = jnp.ones((b, s), bool).at[1, 0].set(False)
    view = CacheView(q_pos, q_pos, kv_pos, valid)
    for layer in (0, 2):
        got = live_window(q, k_all, v_all, layer, view, policy, "xla", block=64, batched=batched)
        want = _reference(q, q_pos, k_all[layer], v_all[layer], kv_pos, policy.window, policy.sinks)
        np.testing.assert_allclose(np.asarray(got)[valid], np.asarray(want)[valid], atol=2e-5, rtol=0)
    # a traced layer index (the engine's scan over stacked layers) reads the same rows
    traced = jax.jit(lambda i: live_window(q, k_all, v_all, i, view, policy, "xla", block=64, batched=batched))(1)
    want = _reference(q, q_pos, k_all[1], v_all[1], kv_pos, policy.window, policy.sinks)
    np.testing.assert_allclose(np.asarray(traced)[valid], np.asarray(want)[valid], atol=2e-5, rtol=0)


@pytest.mark.parametrize("policy", [ContextPolicy("hard", 0, 0, 1000, 5, 200),
                                    ContextPolicy("sliding", 6, 400, 404, 5, None)])
def test_a_young_slot_visits_only_its_own_chunks(policy):
    """Per-slot ranges: next to a slot 900 positions old, a 10-position-old slot visits one
    64-row chunk (not the old slot's count), and an idle slot visits none."""
    s = 1
    length = jnp.asarray([900, 10, 900], jnp.int32)
    q_pos = length[:, None] - s + jnp.arange(s)[None]
    valid = jnp.asarray([[True], [True], [False]])
    view = CacheView(q_pos, q_pos, policy.row_positions(length), valid)
    counts = np.asarray(live_chunk_counts(view, policy, policy.rows, block=64))
    assert counts[1] == 1 and counts[2] == 0 and counts[0] > 5, counts


def test_chunk_length_follows_the_bytes_per_row():
    """~256 KiB of keys per chunk, a power of two in [512, 4096]: tiny's rows (2 KV heads x 16,
    f32: 128 B) make 2048-row chunks, small's (4 x 64, f32: 1 KiB) 512, and the bounds hold."""
    assert live_block(2, 16, 4) == 2048
    assert live_block(4, 64, 4) == 512 and live_block(4, 64, 2) == 512
    assert live_block(1, 8, 2) == 4096 and live_block(8, 256, 4) == 512
    assert live_block(3, 40, 2) == 1024  # 1092 rows rounded down to a power of two


def test_default_chunks_match_the_reference():
    """The default chunk length (here the whole 300-row cache: one clamped chunk) gives the same rows."""
    policy = ContextPolicy("hard", 0, 0, 300, 5, None)
    rng = np.random.default_rng(3)
    length = jnp.asarray([250, 40], jnp.int32)
    s = 4
    q_pos = length[:, None] - s + jnp.arange(s)[None]
    kv_pos = policy.row_positions(length)
    k_all = jnp.asarray(rng.standard_normal((L, 2, policy.rows, KVH, HD)), jnp.float32)
    v_all = jnp.asarray(rng.standard_normal((L, 2, policy.rows, KVH, HD)), jnp.float32)
    q = jnp.asarray(rng.standard_normal((2, s, H, HD)), jnp.float32)
    view = CacheView(q_pos, q_pos, kv_pos, jnp.ones((2, s), bool))
    got = live_window(q, k_all, v_all, 2, view, policy, "xla")
    want = _reference(q, q_pos, k_all[2], v_all[2], kv_pos, policy.window, policy.sinks)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=2e-5, rtol=0)


def test_the_first_chunk_path_is_taken_only_when_every_slot_fits_in_it():
    """The batched first-chunk path runs iff no slot's live chunks go past rows [0, block): two
    young slots and an idle one take it; one slot a position past the chunk does not."""
    policy = ContextPolicy("hard", 0, 0, 300, 5, 60)

    def suffices(lengths, valid):
        length = jnp.asarray(lengths, jnp.int32)
        q_pos = length[:, None] - 1
        view = CacheView(q_pos, q_pos, policy.row_positions(length), jnp.asarray(valid)[:, None])
        return bool(_first_chunk_suffices(view, policy, 64))

    assert suffices([10, 64, 250], [True, True, False])  # the old slot is idle this step
    assert not suffices([10, 65, 0], [True, True, False])  # position 64 is in the second chunk


def test_the_path_follows_the_slots_ages():
    """Slots of one age share one loop; an old slot beside young ones sends each to its own loop (a
    young session does not pay for the old one's chunks); young slots take the first chunk."""
    policy = ContextPolicy("hard", 0, 0, 1000, 5, None)

    def path(lengths, valid=None):
        length = jnp.asarray(lengths, jnp.int32)
        q_pos = length[:, None] - 1
        valid = jnp.ones((len(lengths), 1), bool) if valid is None else jnp.asarray(valid)[:, None]
        return int(live_path(CacheView(q_pos, q_pos, policy.row_positions(length), valid), policy, 64))

    assert path([10, 40, 63]) == 0
    assert path([900, 880, 910, 899]) == 1  # 15 chunks each: sharing visits no more than the slots need
    assert path([900, 10, 10, 10]) == 2  # shared would visit 4 x 15 chunks for 18 needed
    assert path([900, 10, 10, 10], [True, False, False, False]) == 2  # idle slots need none
    assert path([900, 900, 900, 800]) == 1  # 60 visits for 58 needed: within the slack (1.25)
    assert path([900, 900, 900, 10]) == 2  # 60 visits for 46 needed: past it


def test_the_shared_paths_compare_rows_read_with_their_own_chunks():
    """The shared paths read shorter chunks (64 rows) than the per-slot loop (256): the choice
    compares rows read, and the first-chunk path needs every slot within the shorter chunk."""
    policy = ContextPolicy("hard", 0, 0, 1000, 5, None)

    def path(lengths):
        length = jnp.asarray(lengths, jnp.int32)
        q_pos = length[:, None] - 1
        view = CacheView(q_pos, q_pos, policy.row_positions(length), jnp.ones((len(lengths), 1), bool))
        return int(live_path(view, policy, 256, 64))

    assert path([10, 40, 63]) == 0
    assert path([10, 40, 100]) == 1  # 3 x 2 x 64 rows shared against 3 x 256 per slot
    assert path([900, 880, 910, 899]) == 1  # 4 x 15 x 64 = 3,840 rows against 4 x 4 x 256 = 4,096
    assert path([900, 10, 10, 10]) == 2  # 3,840 rows against (4 + 1 + 1 + 1) x 256 = 1,792


def _split(stacked):
    """A stacked [L, B, T, KVH, HD] cache as the engine's split one: per layer [B, T, KVH * HD]
    ([T, KVH * HD] for one slot)."""
    L_, b, t = stacked.shape[:3]
    return tuple(stacked[i].reshape((t, -1) if b == 1 else (b, t, -1)) for i in range(L_))


@pytest.mark.parametrize("read", ["whole", "chunks"])
@pytest.mark.parametrize("policy, lengths, s", [
    (ContextPolicy("hard", 0, 0, 300, 5, 60), (123, 297), 1),
    (ContextPolicy("hard", 0, 0, 300, 5, 60), (12, 40), 1),  # young sessions: the default reads chunks
    (ContextPolicy("hard", 4, 50, 296, 5, 60), (200, 290), 2),  # window + sinks, two positions
    (ContextPolicy("sliding", 6, 40, 44, 5, None), (250, 17), 1),  # a wrapped ring: the block evicts a row
])
def test_live_flat_reads_before_the_write_like_dense_after_it(policy, lengths, s, read, monkeypatch):
    """"live_flat" on a split cache: the one-position read of the cache as it was *before* the block's
    write (the rows it writes hold stale K/V) plus the block's own K/V equals the reference over the
    cache *after* the write, whether the old rows are read as the whole buffer or in live chunks
    (`read`, forced where the cache does not wrap; a ring is read whole); an idle slot's rows are
    its own; a block of more query rows runs
    "live_window" after the write, and a stacked cache the plain "live_window"."""
    monkeypatch.setattr(cache_attention, "FLAT_MIN_FILL", 10**9 if read == "whole" else 0)
    rng = np.random.RandomState(1)
    b = 3
    length = jnp.asarray(lengths + (5,), jnp.int32)  # slot 2 idle: writes to a scratch row
    active = jnp.asarray([True, True, False])
    k_old = jnp.asarray(rng.randn(L, b, policy.rows, KVH, HD), jnp.float32)
    v_old = jnp.asarray(rng.randn(L, b, policy.rows, KVH, HD), jnp.float32)
    k_new = jnp.asarray(rng.randn(b, s, KVH, HD), jnp.float32)
    v_new = jnp.asarray(rng.randn(b, s, KVH, HD), jnp.float32)
    q = jnp.asarray(rng.randn(b, s, H, HD), jnp.float32)
    start = length - s
    rows = policy.write_rows(start, s, active)
    q_pos = start[:, None] + jnp.arange(s)[None]
    kv_pos = policy.row_positions(jnp.where(active, length, start))
    view = CacheView(rows, q_pos, kv_pos, jnp.broadcast_to(active[:, None], (b, s)))
    layer = 1
    b_idx = jnp.arange(b)[:, None]
    k_after = k_old.at[layer, b_idx, rows].set(k_new)
    v_after = v_old.at[layer, b_idx, rows].set(v_new)
    want = _reference(q, q_pos, k_after[layer], v_after[layer], kv_pos, policy.window, policy.sinks)
    got = cache_attention.flat_before_write(q, k_new, v_new, _split(k_old), _split(v_old), layer, view, policy)
    np.testing.assert_allclose(np.asarray(got)[:2], np.asarray(want)[:2], atol=2e-5, rtol=0)
    # after the write (what a block too large for the flat read runs), split and stacked alike
    split_after = live_window(q, _split(k_after), _split(v_after), layer, view, policy, "xla", block=64)
    np.testing.assert_allclose(np.asarray(split_after)[:2], np.asarray(want)[:2], atol=2e-5, rtol=0)
    one = CacheView(*(a[:1] for a in view))  # a one-slot engine's split cache: [T, KVH * HD] per layer
    got = cache_attention.flat_before_write(q[:1], k_new[:1], v_new[:1], _split(k_old[:, :1]), _split(v_old[:, :1]),
                                            layer, one, policy)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want)[:1], atol=2e-5, rtol=0)
    assert cache_attention.flat_before_write(q, k_new, v_new, k_old, v_old, layer, view, policy) is None
    big = jnp.asarray(rng.randn(b, 5, H, HD), jnp.float32)  # 5 positions x 2 heads per KV head > 8 rows
    assert cache_attention.flat_before_write(big, jnp.zeros((b, 5, KVH, HD)), jnp.zeros((b, 5, KVH, HD)),
                                             _split(k_old), _split(v_old), layer, view, policy) is None
