"""Batch invariance, tested directly: row i of a batch-of-N result is bitwise the batch-of-1 result."""

from __future__ import annotations

import jax
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
