"""Batch invariance, tested directly: row i of a batch-of-N result is bitwise the batch-of-1 result."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from interaction_jax.model.attention import attention as model_attention
from pallas_kernels import batch_invariant as bi
from pallas_kernels.flash_attention import flash_attention_reference

RNG = np.random.default_rng(0)
X = RNG.standard_normal((37, 200)).astype(np.float32)
W = RNG.standard_normal((200, 72)).astype(np.float32)
SCALE = RNG.standard_normal((200,)).astype(np.float32)


def _assert_rows_invariant(fn, x, rows=(0, 5, 36)):
    full = np.asarray(fn(x))
    for n in (1, 2, 19):  # batch sizes other than the full one
        part = np.asarray(fn(x[:n]))
        np.testing.assert_array_equal(part, full[:n])
    for i in rows:
        np.testing.assert_array_equal(np.asarray(fn(x[i : i + 1]))[0], full[i])
    return full


@pytest.mark.parametrize("impl", ["reference", "interpret"])
def test_matmul_batch_invariant(impl):
    f = jax.jit(lambda x: bi.matmul(x, W, implementation=impl))
    full = _assert_rows_invariant(f, X)
    np.testing.assert_allclose(full, X.astype(np.float64) @ W, atol=1e-3, rtol=1e-4)


@pytest.mark.parametrize("impl", ["reference", "interpret"])
def test_rms_norm_batch_invariant(impl):
    f = jax.jit(lambda x: bi.rms_norm(x, SCALE, eps=1e-6, implementation=impl))
    full = _assert_rows_invariant(f, X)
    x64 = X.astype(np.float64)
    want = x64 / np.sqrt((x64**2).mean(-1, keepdims=True) + 1e-6) * SCALE
    np.testing.assert_allclose(full, want, atol=1e-5, rtol=1e-5)


def test_attention_batch_and_length_invariant():
    """Same slot alone vs in a batch, and the first 20 queries of a 20- vs 41-long sequence."""
    b, s, h, kvh, hd = 3, 41, 4, 2, 16
    q = RNG.standard_normal((b, s, h, hd)).astype(np.float32)
    k = RNG.standard_normal((b, s, kvh, hd)).astype(np.float32)
    v = RNG.standard_normal((b, s, kvh, hd)).astype(np.float32)
    f = jax.jit(lambda q, k, v: bi.attention(q, k, v, window=9, sinks=1))
    full = np.asarray(f(q, k, v))
    np.testing.assert_array_equal(np.asarray(f(q[2:], k[2:], v[2:]))[0], full[2])
    np.testing.assert_array_equal(np.asarray(f(q[:, :20], k[:, :20], v[:, :20])), full[:, :20])
    np.testing.assert_allclose(full, flash_attention_reference(q, k, v, window=9, sinks=1), atol=2e-5, rtol=2e-5)


def test_model_attention_registry_uses_kernels():
    """attention(impl="pallas_interpret") (lazily registered) matches the model's XLA impl."""
    q = RNG.standard_normal((2, 12, 4, 16)).astype(np.float32)
    k = RNG.standard_normal((2, 12, 2, 16)).astype(np.float32)
    v = RNG.standard_normal((2, 12, 2, 16)).astype(np.float32)
    pos = np.broadcast_to(np.arange(12)[None], (2, 12))
    want = model_attention(q, k, v, q_positions=pos, kv_positions=pos, window=5, impl="xla")
    for impl in ("pallas", "pallas_interpret", "pallas_batch_invariant"):
        got = model_attention(q, k, v, q_positions=pos, kv_positions=pos, window=5, impl=impl)
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=2e-5, rtol=2e-5)


@pytest.mark.gpu
@pytest.mark.skipif(jax.default_backend() != "gpu", reason="needs a GPU")
def test_batch_invariant_compiled_gpu():
    f = jax.jit(lambda x: bi.matmul(x, W, implementation="triton"))
    _assert_rows_invariant(f, X)


def test_layer_norm_batch_invariant():
    bias = RNG.standard_normal((200,)).astype(np.float32)
    f = jax.jit(lambda x: bi.layer_norm_reference(x, SCALE, bias, eps=1e-6))
    full = _assert_rows_invariant(f, X)
    x64 = X.astype(np.float64)
    want = (x64 - x64.mean(-1, keepdims=True)) / np.sqrt(x64.var(-1, keepdims=True) + 1e-6) * SCALE + bias
    np.testing.assert_allclose(full, want, atol=1e-4, rtol=1e-4)


def test_exp_invariant_is_accurate_and_shape_independent():
    x = np.concatenate([RNG.uniform(-90, 88.7, 3000), RNG.standard_normal(1000) * 3]).astype(np.float32)
    f = jax.jit(bi.exp_invariant)
    full = np.asarray(f(x))
    with np.errstate(over="ignore"):
        want = np.exp(x.astype(np.float64))
    ok = x > -87
    np.testing.assert_allclose(full[ok], want[ok], rtol=3e-7)
    assert np.all(full[~ok] == 0.0)
    for start, n in ((0, 1), (3, 5), (5, 17), (7, 64), (1, 3999)):  # XLA's own exp fails this
        np.testing.assert_array_equal(np.asarray(f(x[start : start + n])), full[start : start + n])
    np.testing.assert_array_equal(np.asarray(f(x.reshape(40, 100)))[3], full[300:400])


def test_chunked_attention_matches_reference_and_skipping_masked_chunks_is_exact():
    """Sequence layout vs the independent reference; then the same queries with keys scattered into
    a shuffled 'cache', fewer queries and per-tile chunk ranges that skip fully masked chunks."""
    b, s, h, kvh, hd, window, sinks = 2, 420, 4, 2, 16, 70, 5
    q = RNG.standard_normal((b, s, h, hd)).astype(np.float32)
    k = RNG.standard_normal((b, s, kvh, hd)).astype(np.float32)
    v = RNG.standard_normal((b, s, kvh, hd)).astype(np.float32)
    pos = np.broadcast_to(np.arange(s, dtype=np.int32), (b, s))
    full = np.asarray(jax.jit(lambda q, k, v: bi.attention_sequence(q, k, v, pos, pos, window=window, sinks=sinks))(
        q, k, v))
    want = flash_attention_reference(q, k, v, window=window, sinks=sinks)
    np.testing.assert_allclose(full, want, atol=2e-5, rtol=2e-5)

    c = bi.BLOCK_KV
    perm = RNG.permutation(s)  # key at position p lives in row perm[p]
    kc, vc = np.zeros_like(k), np.zeros_like(v) + 1e3  # unwritten rows: garbage that must not leak
    kc[:, perm], vc[:, perm] = k, v
    held = np.full((b, s), -1, np.int32)
    held[:, perm] = pos
    held[1, perm[380]] = -1  # slot 1 lost position 380 (e.g. evicted): a hole only in that slot

    def chunk(ci, slot):
        p = ci * c + jnp.arange(c, dtype=jnp.int32)
        r = jnp.asarray(perm)[jnp.clip(p, 0, s - 1)]
        ok = (p < s) & (jnp.asarray(held)[slot, r] == p)
        return jnp.asarray(kc)[slot, r], jnp.asarray(vc)[slot, r], jnp.where(ok, p, -1)

    assert c == 128
    sel = slice(400, 420)  # queries 400..419 see sinks [0, 5) and [331, 419]: chunks 0, 2, 3
    # per-tile live ranges (chunk 0 for the sinks, then the window's) skip chunk 1, which the
    # sequence layout visits fully masked
    ranges = functools.partial(bi.live_chunk_ranges, window=window, sinks=sinks, block_kv=c)
    got = np.asarray(jax.jit(lambda q: bi.chunked_attention(q, jnp.asarray(pos[:, sel]), chunk, ranges,
                                                            window=window, sinks=sinks))(q[:, sel]))
    np.testing.assert_array_equal(got[0], full[0, sel])
    assert not np.array_equal(got[1], full[1, sel])  # the hole is seen: the cache path is really used
    pos_h = pos.copy()
    pos_h[1, 380] = -1
    hole = np.asarray(bi.attention_sequence(q[1:], k[1:], v[1:], pos[1:], pos_h[1:], window=window, sinks=sinks))
    np.testing.assert_array_equal(got[1], hole[0, sel])
