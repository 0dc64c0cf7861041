"""Flash attention in Pallas interpret mode vs the dense reference and jax.nn.dot_product_attention."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pallas_kernels.flash_attention import flash_attention, flash_attention_reference

TOL = dict(atol=2e-5, rtol=2e-5)


def _qkv(seed, b, s, t, h, kvh, hd):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((b, s, h, hd)).astype(np.float32)
    k = rng.standard_normal((b, t, kvh, hd)).astype(np.float32)
    v = rng.standard_normal((b, t, kvh, hd)).astype(np.float32)
    ct = rng.standard_normal((b, s, h, hd)).astype(np.float32)
    return q, k, v, ct


def _value_and_grads(fn, q, k, v, ct):
    """(out, dq, dk, dv) of fn in one jitted call (one compile per case keeps interpret tests fast)."""

    def run(q, k, v, ct):
        out, vjp = jax.vjp(fn, q, k, v)
        return (out, *vjp(ct))

    return [np.asarray(x) for x in jax.jit(run)(q, k, v, ct)]


def _assert_match(fn_kernel, fn_ref, *arrays):
    for got, want in zip(_value_and_grads(fn_kernel, *arrays), _value_and_grads(fn_ref, *arrays)):
        np.testing.assert_allclose(got, want, **TOL)


@settings(max_examples=3, deadline=None)
@given(
    s=st.integers(5, 40),
    heads=st.sampled_from([(2, 2), (4, 2), (4, 1)]),
    window=st.sampled_from([0, 6]),
    sinks=st.sampled_from([0, 2]),
    blocks=st.sampled_from([(16, 16), (16, 32)]),
    seed=st.integers(0, 99),
)
def test_flash_matches_reference_fwd_and_grad(s, heads, window, sinks, blocks, seed):
    """Causal GQA over lengths that are not block multiples, with/without sliding window + sinks."""
    h, kvh = heads
    kw = dict(causal=True, window=window, sinks=sinks if window else 0)
    arrays = _qkv(seed, 2, s, s, h, kvh, 16)
    bq, bk = blocks
    kern = lambda q, k, v: flash_attention(q, k, v, block_q=bq, block_k=bk, implementation="interpret", **kw)
    ref = lambda q, k, v: flash_attention_reference(q, k, v, **kw)
    _assert_match(kern, ref, *arrays)


def test_flash_matches_jax_dot_product_attention():
    """Independent check against jax.nn.dot_product_attention: causal GQA with a local window."""
    q, k, v, ct = _qkv(1, 2, 33, 33, 4, 2, 16)
    kern = lambda q, k, v: flash_attention(q, k, v, window=5, block_q=16, block_k=16, implementation="interpret")
    ref = lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=True, local_window_size=(4, 0))
    _assert_match(kern, ref, q, k, v, ct)


def test_flash_segments_positions_and_dense_mask():
    """Packed segments with per-segment positions, a decode-style suffix (S < T) and a dense mask."""
    q, k, v, ct = _qkv(2, 2, 24, 24, 2, 1, 16)
    seg = np.repeat(np.array([[0] * 10 + [1] * 14, [0] * 20 + [1] * 4]), 1, axis=0).astype(np.int32)
    pos = np.concatenate([np.arange(10), np.arange(14)])[None].repeat(2, 0)
    pos[1] = np.concatenate([np.arange(20), np.arange(4)])
    kw = dict(q_positions=pos, kv_positions=pos, q_segment_ids=seg, kv_segment_ids=seg)
    kern = lambda q, k, v: flash_attention(q, k, v, block_q=16, block_k=16, implementation="interpret", **kw)
    _assert_match(kern, lambda q, k, v: flash_attention_reference(q, k, v, **kw), q, k, v, ct)

    # Dense mask (the model's registered form), including a row that sees nothing (output 0).
    rng = np.random.default_rng(3)
    mask = rng.random((2, 24, 24)) < 0.6
    mask[0, 3] = False
    kern = lambda q, k, v: flash_attention(q, k, v, causal=False, mask=mask, block_q=16, block_k=16,
                                           implementation="interpret")
    _assert_match(kern, lambda q, k, v: flash_attention_reference(q, k, v, causal=False, mask=mask), q, k, v, ct)
    out = kern(q, k, v)
    assert np.all(np.asarray(out)[0, 3] == 0)


def test_flash_bf16_close_to_f32_reference():
    q, k, v, _ = _qkv(4, 1, 32, 32, 2, 2, 16)
    out = flash_attention(*(jnp.asarray(x, jnp.bfloat16) for x in (q, k, v)), block_q=16, block_k=16,
                          implementation="interpret")
    assert out.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(out, np.float32), flash_attention_reference(q, k, v), atol=3e-2)


def test_dispatcher_falls_back_to_reference_on_cpu():
    q, k, v, _ = _qkv(5, 1, 8, 8, 2, 2, 16)
    if jax.default_backend() == "cpu":
        np.testing.assert_array_equal(flash_attention(q, k, v), flash_attention_reference(q, k, v))
    with pytest.raises(ValueError, match="implementation"):
        flash_attention(q, k, v, implementation="cuda")


@pytest.mark.gpu
@pytest.mark.skipif(jax.default_backend() != "gpu", reason="needs a GPU")
def test_flash_compiled_gpu():
    q, k, v, ct = _qkv(6, 2, 256, 256, 8, 2, 64)
    kern = lambda q, k, v: flash_attention(q, k, v, window=64, implementation="triton")
    got = _value_and_grads(kern, q, k, v, ct)
    want = _value_and_grads(lambda q, k, v: flash_attention_reference(q, k, v, window=64), q, k, v, ct)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, atol=2e-2, rtol=2e-2)  # TF32 dots on GPU


@pytest.mark.parametrize("case", ["causal_window_sinks_gqa", "segments_positions", "dense_mask"])
def test_flash_mosaic_in_tpu_interpreter_fwd_and_grads(case):
    """The TPU (Mosaic) flash kernels, run by the TPU interpreter, vs the dense reference: output and
    dq / dk / dv, ragged lengths (S=T=150 over 128-key blocks), GQA, window + sinks, packed segments
    with explicit positions (no index bounds), and a dense mask."""
    b, s, h, kvh, hd = 2, 150, 4, 2, 24
    q, k, v, ct = _qkv(31, b, s, s, h, kvh, hd)
    rng = np.random.default_rng(32)
    if case == "causal_window_sinks_gqa":
        kw = dict(window=40, sinks=3)
    elif case == "segments_positions":
        seg = np.sort(rng.integers(0, 3, size=(b, s)), axis=1).astype(np.int32)
        pos = np.broadcast_to(np.arange(s, dtype=np.int32), (b, s))
        kw = dict(q_segment_ids=seg, kv_segment_ids=seg, q_positions=pos, kv_positions=pos)
    else:
        kw = dict(causal=False, mask=rng.random((b, s, s)) < 0.5)
    kern = lambda q, k, v: flash_attention(q, k, v, block_q=64, implementation="mosaic_interpret", **kw)
    _assert_match(kern, lambda q, k, v: flash_attention_reference(q, k, v, **kw), q, k, v, ct)
