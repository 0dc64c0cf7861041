"""Attention against jax.nn.dot_product_attention and hand-built masks; RoPE; the cached step."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from interaction_jax.model.attention import Attention, attention, make_mask, rope

B, L, H, KVH, HD = 2, 12, 4, 2, 8

# Everything runs under jit: op-by-op dispatch compiles every primitive and is far slower on CPU.
_attention = jax.jit(attention, static_argnames=("window", "sinks", "impl"))
_reference = jax.jit(jax.nn.dot_product_attention, static_argnames=("is_causal",))
_full = nnx.jit(lambda attn, x, pos: attn(x, pos))
_cached = nnx.jit(lambda attn, x, pos, kc, vc, lengths: attn.cached(x, pos, kc, vc, lengths))


def _qkv(seed=0):
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    return (
        jax.random.normal(k1, (B, L, H, HD)),
        jax.random.normal(k2, (B, L, KVH, HD)),
        jax.random.normal(k3, (B, L, KVH, HD)),
    )


def _explicit_mask(window, sinks):
    m = np.zeros((L, L), bool)
    for i in range(L):
        for j in range(L):
            m[i, j] = j <= i and (window == 0 or i - j < window or j < sinks)
    return np.broadcast_to(m, (B, L, L))


def test_causal_gqa_matches_jax_nn():
    q, k, v = _qkv()
    pos = np.broadcast_to(np.arange(L), (B, L))
    ours = _attention(q, k, v, q_positions=pos, kv_positions=pos)
    ref = _reference(q, k, v, is_causal=True)
    np.testing.assert_allclose(ours, ref, atol=1e-5)


@pytest.mark.parametrize("window,sinks", [(4, 0), (4, 2), (1, 1)])
def test_sliding_window_with_sinks_matches_explicit_mask(window, sinks):
    q, k, v = _qkv(1)
    pos = np.broadcast_to(np.arange(L), (B, L))
    expected_mask = _explicit_mask(window, sinks)
    np.testing.assert_array_equal(make_mask(pos, pos, window=window, sinks=sinks), expected_mask)
    ours = _attention(q, k, v, q_positions=pos, kv_positions=pos, window=window, sinks=sinks)
    ref = _reference(q, k, v, mask=expected_mask[:, None])
    np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_explicit_mask_argument_and_unknown_impl():
    q, k, v = _qkv(2)
    mask = (np.random.RandomState(0).rand(B, L, L) < 0.5) | np.eye(L, dtype=bool)
    ref = _reference(q, k, v, mask=mask[:, None])
    np.testing.assert_allclose(_attention(q, k, v, mask=mask), ref, atol=1e-5)
    with pytest.raises(ValueError, match="unknown attention impl"):
        attention(q, k, v, mask=mask, impl="nope")


def test_rope_scores_depend_only_on_relative_position():
    rs = np.random.RandomState(3)
    q, k = rs.randn(1, 1, 1, HD).astype(np.float32), rs.randn(1, 1, 1, HD).astype(np.float32)
    score = jax.jit(lambda pq, pk: jnp.sum(rope(q, pq[None, None], 1e4) * rope(k, pk[None, None], 1e4)))
    assert float(score(5, 2)) == pytest.approx(float(score(103, 100)), abs=1e-4)
    assert float(score(0, 0)) == pytest.approx(float(np.sum(q * k)), abs=1e-5)


@pytest.mark.parametrize("window,sinks", [(0, 0), (5, 2)])
def test_cached_blocks_and_per_slot_offsets_match_full_attention(window, sinks):
    d = 16
    attn = Attention(d, H, KVH, HD, window=window, sinks=sinks, rngs=nnx.Rngs(0))
    x = np.random.RandomState(5).randn(B, L, d).astype(np.float32)
    pos = np.broadcast_to(np.arange(L), (B, L))
    full = _full(attn, x, pos)
    kc = np.zeros((B, 20, KVH, HD), np.float32)
    vc = np.zeros((B, 20, KVH, HD), np.float32)
    # Two blocks of 6 at the same offsets for both slots.
    y0, kc, vc = _cached(attn, x[:, :6], pos[:, :6], kc, vc, np.zeros((B,), np.int32))
    y1, _, _ = _cached(attn, x[:, 6:], pos[:, 6:], kc, vc, np.full((B,), 6, np.int32))
    np.testing.assert_allclose(np.concatenate([y0, y1], 1), full, atol=1e-5)
    # Per-slot offsets: slot 0 resumes at 4 (its stale rows 4, 5 get overwritten), slot 1 at 6.
    blk = np.stack([x[0, 4:10], x[1, 6:12]])
    bpos = np.stack([pos[0, 4:10], pos[1, 6:12]])
    y, kc2, _ = _cached(attn, blk, bpos, kc, vc, np.array([4, 6], np.int32))
    np.testing.assert_allclose(y[0], full[0, 4:10], atol=1e-5)
    np.testing.assert_allclose(y[1], full[1, 6:12], atol=1e-5)
    np.testing.assert_array_equal(np.asarray(kc2)[1, :6], np.asarray(kc)[1, :6])  # the prefix of slot 1 is untouched


@pytest.mark.parametrize("length,block,window,sinks", [(40, 16, 0, 0), (40, 16, 7, 2), (33, 8, 0, 0), (8, 16, 0, 0)])
def test_causal_blocks_match_jax_nn_forward_and_gradient(length, block, window, sinks):
    """The block-skipping impl equals jax.nn.dot_product_attention on causal / window masks,
    values and gradients (the blocks above the diagonal it skips hold no visible key)."""
    from interaction_jax.model.attention import causal_block_attention

    ks = jax.random.split(jax.random.key(7), 4)
    q = jax.random.normal(ks[0], (B, length, H, HD))
    k = jax.random.normal(ks[1], (B, length, KVH, HD))
    v = jax.random.normal(ks[2], (B, length, KVH, HD))
    ct = jax.random.normal(ks[3], (B, length, H, HD))
    pos = jnp.broadcast_to(jnp.arange(length) + 5, (B, length))  # offset start, increasing
    mask = make_mask(pos, pos, window=window, sinks=sinks)
    ref_mask = mask[:, None] if window else None  # window + sinks: jax.nn takes the explicit mask

    def ours(q, k, v):
        return jnp.sum(causal_block_attention(q, k, v, mask, block=block) * ct)

    def ref(q, k, v):
        out = jax.nn.dot_product_attention(q, k, v, mask=ref_mask, is_causal=not window)
        return jnp.sum(out * ct)

    np.testing.assert_allclose(
        jax.jit(lambda q, k, v: causal_block_attention(q, k, v, mask, block=block))(q, k, v),
        jax.jit(lambda q, k, v: jax.nn.dot_product_attention(q, k, v, mask=ref_mask, is_causal=not window))(q, k, v),
        atol=2e-5,
    )
    g_ours = jax.jit(jax.grad(ours, argnums=(0, 1, 2)))(q, k, v)
    g_ref = jax.jit(jax.grad(ref, argnums=(0, 1, 2)))(q, k, v)
    for a, b in zip(g_ours, g_ref):
        np.testing.assert_allclose(a, b, atol=5e-5)


def test_causal_blocks_selectable_by_name_and_cached_path_falls_back():
    q, k, v = _qkv(3)
    pos = np.broadcast_to(np.arange(L), (B, L))
    out = _attention(q, k, v, q_positions=pos, kv_positions=pos, impl="xla_causal_blocks")
    np.testing.assert_allclose(out, _reference(q, k, v, is_causal=True), atol=1e-5)
    # a cached block (S != T) has no diagonal to skip above: the dense path answers
    s = 3
    q_rows = np.broadcast_to(np.arange(L - s, L), (B, s))
    kv_rows = np.broadcast_to(np.arange(L), (B, L))
    got = _attention(q[:, -s:], k, v, q_positions=q_rows, kv_positions=kv_rows, impl="xla_causal_blocks")
    np.testing.assert_allclose(got, _reference(q, k, v, is_causal=True)[:, -s:], atol=1e-5)
