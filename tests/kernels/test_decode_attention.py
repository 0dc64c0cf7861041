"""Micro-turn decode attention (split-K) in interpret mode: vs references, and bitwise batch invariance."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pallas_kernels.decode_attention import decode_attention, decode_attention_reference
from pallas_kernels.flash_attention import flash_attention_reference

KW = dict(split_size=32, block_k=16, implementation="interpret")


def _inputs(seed, b, s, t, h, kvh, hd=16):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((b, s, h, hd)).astype(np.float32)
    k = rng.standard_normal((b, t, kvh, hd)).astype(np.float32)
    v = rng.standard_normal((b, t, kvh, hd)).astype(np.float32)
    lengths = rng.integers(s, t + 1, size=b).astype(np.int32)
    return q, k, v, lengths


@settings(max_examples=2, deadline=None)
@given(s=st.integers(1, 4), t=st.integers(8, 90), heads=st.sampled_from([(4, 2), (2, 2)]),
       window=st.sampled_from([0, 12]), seed=st.integers(0, 99))
def test_decode_matches_reference(s, t, heads, window, seed):
    q, k, v, lengths = _inputs(seed, 3, s, t, *heads)
    got = decode_attention(q, k, v, lengths, window=window, sinks=2 if window else 0, **KW)
    want = decode_attention_reference(q, k, v, lengths, window=window, sinks=2 if window else 0)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=2e-5, rtol=2e-5)


def test_decode_matches_independent_dense_attention():
    """Same result as dense attention with explicit row positions and a valid-row mask."""
    q, k, v, lengths = _inputs(7, 2, 3, 70, 4, 1)
    got = decode_attention(q, k, v, lengths, **KW)
    q_pos = lengths[:, None] - 3 + np.arange(3)[None]
    kv_pos = np.broadcast_to(np.arange(70)[None], (2, 70))
    valid = np.broadcast_to((kv_pos < lengths[:, None])[:, None, :], (2, 3, 70))
    want = flash_attention_reference(q, k, v, q_positions=q_pos, kv_positions=kv_pos, mask=valid)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=2e-5, rtol=2e-5)


def test_decode_bitwise_independent_of_batch_and_capacity():
    """Slot i of a batch of N == the same slot alone, and == the same slot in a larger cache."""
    q, k, v, lengths = _inputs(11, 4, 2, 64, 4, 2)
    f = jax.jit(lambda q, k, v, n: decode_attention(q, k, v, n, window=20, sinks=1, **KW))
    full = np.asarray(f(q, k, v, lengths))
    for i in (0, 3):
        alone = np.asarray(f(q[i : i + 1], k[i : i + 1], v[i : i + 1], lengths[i : i + 1]))
        np.testing.assert_array_equal(alone[0], full[i])
    big_k = np.concatenate([k, np.full((4, 40, 2, 16), 7.0, np.float32)], axis=1)  # garbage past the lengths
    big_v = np.concatenate([v, np.full((4, 40, 2, 16), -3.0, np.float32)], axis=1)
    np.testing.assert_array_equal(np.asarray(f(q, big_k, big_v, lengths)), full)


@pytest.mark.gpu
@pytest.mark.skipif(jax.default_backend() != "gpu", reason="needs a GPU")
def test_decode_compiled_gpu():
    q, k, v, lengths = _inputs(12, 8, 4, 2048, 8, 2, hd=64)
    got = decode_attention(q, k, v, lengths, implementation="triton")
    want = decode_attention_reference(q, k, v, lengths)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=2e-2, rtol=2e-2)


def test_decode_ring_cache_row_map_matches_contiguous_cache():
    """A shuffled ring cache with its row -> position map (empty rows = -1) gives the contiguous result."""
    q, k, v, _ = _inputs(11, 2, 3, 70, 4, 2)
    lengths = np.array([70, 50], np.int32)
    perm = np.random.default_rng(12).permutation(70)  # row r holds position perm[r]
    kr, vr = k[:, perm], v[:, perm]
    kr[1, perm >= 50] = 1e3  # rows slot 1 never wrote: garbage that must not leak
    kv_pos = np.stack([perm, np.where(perm < 50, perm, -1)]).astype(np.int32)
    q_pos = lengths[:, None] - 3 + np.arange(3, dtype=np.int32)[None]
    want = flash_attention_reference(q, k, v, window=20, sinks=2, q_positions=q_pos,
                                     kv_positions=np.broadcast_to(np.arange(70, dtype=np.int32), (2, 70)),
                                     kv_segment_ids=(np.arange(70)[None] >= lengths[:, None]).astype(np.int32),
                                     q_segment_ids=np.zeros((2, 3), np.int32))
    rows_in_use = np.full(2, 70, np.int32)
    for impl in ("interpret", "reference"):
        got = decode_attention(q, kr, vr, rows_in_use, q_positions=q_pos, kv_positions=kv_pos, window=20, sinks=2,
                               **{**KW, "implementation": impl})
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("window,sinks,hd", [(0, 0, 16), (30, 3, 80)])
def test_decode_mosaic_kernel_in_tpu_interpreter(window, sinks, hd):
    """The TPU (Mosaic) variant, run by the TPU interpreter: vs the reference, plus the ring row map and
    bitwise independence of the other slots (its splits past a slot's length reuse the last block)."""
    q, k, v, lengths = _inputs(21, 3, 2, 150, 4, 2, hd=hd)
    lengths = np.array([150, 9, 77], np.int32)
    kw = dict(window=window, sinks=sinks, split_size=64, block_k=32)
    got = np.asarray(decode_attention(q, k, v, lengths, implementation="mosaic_interpret", **kw))
    want = np.asarray(decode_attention_reference(q, k, v, lengths, window=window, sinks=sinks))
    np.testing.assert_allclose(got, want, atol=2e-5, rtol=2e-5)
    one = decode_attention(q[2:], k[2:], v[2:], lengths[2:], implementation="mosaic_interpret", **kw)
    np.testing.assert_array_equal(np.asarray(one)[0], got[2])
    perm = np.random.default_rng(3).permutation(150)
    kv_pos = np.broadcast_to(perm, (3, 150)).astype(np.int32)
    q_pos = lengths[:, None] - 2 + np.arange(2, dtype=np.int32)[None]
    ring = decode_attention(q, k[:, perm], v[:, perm], np.full(3, 150, np.int32), q_positions=q_pos,
                            kv_positions=np.where(kv_pos < lengths[:, None], kv_pos, -1),
                            implementation="mosaic_interpret", **kw)
    np.testing.assert_allclose(np.asarray(ring), want, atol=2e-5, rtol=2e-5)
