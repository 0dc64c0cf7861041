"""Compiled (Triton) kernels on a GPU vs their pure-JAX references: a shape sweep, forward and gradients.

Skipped without a GPU. The interpret-mode tests beside this file check the kernels' logic on CPU;
these check what only compilation shows: lowering (non-power-of-two head dims, ragged lengths,
bf16), TF32/bf16 numerics, and bitwise batch invariance of the compiled code. Tolerances are
relative to the reference's largest magnitude (TF32 dots keep ~1e-3 relative error).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels import batch_invariant as bi
from pallas_kernels.decode_attention import decode_attention, decode_attention_reference
from pallas_kernels.flash_attention import flash_attention, flash_attention_reference
from pallas_kernels.gather_gemv import gather_gemv, gather_gemv_reference
from pallas_kernels.grouped_matmul import gmm

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(jax.default_backend() != "gpu", reason="needs a GPU")]


def _close(got, want, tol: float, what: str = "") -> None:
    got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
    assert got.shape == want.shape, (what, got.shape, want.shape)
    assert np.all(np.isfinite(got)), f"{what}: non-finite values"
    err = float(np.max(np.abs(got - want))) / (float(np.max(np.abs(want))) + 1e-6)
    assert err <= tol, f"{what}: max error {err:.2e} of the reference's max magnitude > {tol:.0e}"


def _normal(rng, shape, dtype):
    return jnp.asarray(rng.standard_normal(shape), jnp.float32).astype(dtype)


FLASH_CASES = {
    # name: (b, s, t, h, kvh, hd, dtype, mask kwargs)
    "causal_window_gqa": (2, 256, 256, 8, 2, 64, jnp.float32, dict(window=64)),
    "ragged_hd80_sinks": (1, 200, 200, 4, 4, 80, jnp.float32, dict(window=50, sinks=4)),
    "bf16_hd128": (2, 512, 512, 8, 2, 128, jnp.bfloat16, dict()),
    "segments": (2, 192, 192, 4, 2, 32, jnp.float32, "segments"),
    "dense_mask": (2, 96, 96, 2, 1, 64, jnp.float32, "mask"),
    "positions_prefill": (2, 64, 300, 4, 2, 64, jnp.float32, "positions"),
}


def _flash_kwargs(kind, rng, b, s, t):
    if isinstance(kind, dict):
        return kind
    if kind == "segments":
        seg = np.sort(rng.integers(0, 3, size=(b, s)), axis=1).astype(np.int32)
        return dict(q_segment_ids=seg, kv_segment_ids=seg)
    if kind == "mask":
        return dict(causal=False, mask=jnp.asarray(rng.random((b, s, t)) < 0.6))
    q_pos = np.broadcast_to(np.arange(t - s, t, dtype=np.int32), (b, s))  # the last s of t positions
    return dict(q_positions=q_pos, kv_positions=np.broadcast_to(np.arange(t, dtype=np.int32), (b, t)))


@pytest.mark.parametrize("case", list(FLASH_CASES))
def test_flash_compiled_matches_reference_fwd_and_grads(case):
    b, s, t, h, kvh, hd, dt, kind = FLASH_CASES[case]
    rng = np.random.default_rng(0)
    q, k, v = _normal(rng, (b, s, h, hd), dt), _normal(rng, (b, t, kvh, hd), dt), _normal(rng, (b, t, kvh, hd), dt)
    ct = _normal(rng, (b, s, h, hd), jnp.float32)
    kw = _flash_kwargs(kind, rng, b, s, t)

    def run(fn):
        def f(q, k, v):
            out, vjp = jax.vjp(fn, q, k, v)
            return (out, *vjp(ct.astype(out.dtype)))

        return jax.jit(f)(q, k, v)

    got = run(lambda q, k, v: flash_attention(q, k, v, implementation="triton", **kw))
    want = run(lambda q, k, v: flash_attention_reference(q.astype(jnp.float32), k.astype(jnp.float32),
                                                         v.astype(jnp.float32), **kw))
    tol = 3e-2 if dt == jnp.bfloat16 else 1e-2
    for name, g, w in zip(("out", "dq", "dk", "dv"), got, want):
        _close(g, w, tol, f"{case} {name}")


def test_flash_compiled_batch_invariant_bitwise():
    rng = np.random.default_rng(1)
    q, k, v = (_normal(rng, (5, 160, 4, 64), jnp.float32) for _ in range(3))
    f = jax.jit(lambda q, k, v: bi.attention(q, k, v, window=40, implementation="triton"))
    full = np.asarray(f(q, k, v))
    for i in (0, 3):
        np.testing.assert_array_equal(np.asarray(f(q[i:i + 1], k[i:i + 1], v[i:i + 1]))[0], full[i])


DECODE_CASES = {
    # name: (slots, s, t, h, kvh, hd, dtype, window, sinks)
    "microturn_gqa4": (8, 4, 2048, 8, 2, 64, jnp.float32, 0, 0),
    "one_query_mha": (3, 1, 777, 4, 4, 128, jnp.float32, 0, 0),
    "hd80_window_sinks": (4, 6, 1000, 2, 2, 80, jnp.float32, 300, 4),
    "bf16_group8": (16, 4, 4096, 16, 2, 128, jnp.bfloat16, 0, 0),
}


@pytest.mark.parametrize("case", list(DECODE_CASES))
def test_decode_compiled_matches_reference(case):
    b, s, t, h, kvh, hd, dt, window, sinks = DECODE_CASES[case]
    rng = np.random.default_rng(2)
    q, k, v = _normal(rng, (b, s, h, hd), dt), _normal(rng, (b, t, kvh, hd), dt), _normal(rng, (b, t, kvh, hd), dt)
    lengths = jnp.asarray(rng.integers(s, t + 1, size=b), jnp.int32)
    got = jax.jit(lambda *a: decode_attention(*a, window=window, sinks=sinks, implementation="triton"))(
        q, k, v, lengths)
    f32 = lambda x: x.astype(jnp.float32)
    want = decode_attention_reference(f32(q), f32(k), f32(v), lengths, window=window, sinks=sinks)
    _close(got, want, 3e-2 if dt == jnp.bfloat16 else 1e-2, case)


def test_decode_compiled_bitwise_independent_of_slots_and_capacity():
    rng = np.random.default_rng(3)
    q, k, v = (_normal(rng, shape, jnp.float32) for shape in ((6, 4, 8, 64), (6, 1500, 2, 64), (6, 1500, 2, 64)))
    lengths = jnp.asarray([1500, 37, 600, 4, 1024, 999], jnp.int32)
    f = jax.jit(lambda *a: decode_attention(*a, implementation="triton"))
    full = np.asarray(f(q, k, v, lengths))
    np.testing.assert_array_equal(np.asarray(f(q[2:3], k[2:3], v[2:3], lengths[2:3]))[0], full[2])
    # Same slot in a bigger cache (rows past its length are garbage that must not matter).
    garbage = 1e3 * jnp.ones((1, 700, 2, 64))
    kb, vb = (jnp.concatenate([x[2:3], garbage], axis=1) for x in (k, v))
    np.testing.assert_array_equal(np.asarray(f(q[2:3], kb, vb, lengths[2:3]))[0], full[2])


def _ragged_sizes(rng, m, g):
    cuts = np.sort(rng.integers(0, m + 1, size=g))
    sizes = np.diff(np.concatenate([[0], cuts])).astype(np.int32)
    sizes[rng.integers(0, g)] = 0  # at least one empty expert
    return jnp.asarray(sizes)


@pytest.mark.parametrize("m,k,n,g,dt", [(200, 96, 160, 8, jnp.float32), (1000, 256, 512, 16, jnp.bfloat16),
                                         (7, 64, 64, 4, jnp.float32)])
def test_gmm_compiled_matches_ragged_dot_fwd_and_grads(m, k, n, g, dt):
    rng = np.random.default_rng(4)
    lhs, rhs = _normal(rng, (m, k), dt), _normal(rng, (g, k, n), dt)
    sizes = _ragged_sizes(rng, m, g)
    ct = _normal(rng, (m, n), dt)

    def run(fn):
        def f(a, b):
            out, vjp = jax.vjp(fn, a, b)
            return (out, *vjp(ct))

        return jax.jit(f)(lhs, rhs)

    got = run(lambda a, b: gmm(a, b, sizes, implementation="triton"))
    want = run(lambda a, b: jax.lax.ragged_dot(a.astype(jnp.float32), b.astype(jnp.float32), sizes).astype(dt))
    tol = 3e-2 if dt == jnp.bfloat16 else 1e-2
    for name, gv, wv in zip(("out", "dlhs", "drhs"), got, want):
        _close(gv, wv, tol, f"gmm {name}")


@pytest.mark.parametrize("t,d,f,e,k,dt", [(1, 96, 200, 8, 2, jnp.float32), (8, 256, 512, 64, 8, jnp.float32),
                                           (64, 512, 256, 16, 6, jnp.bfloat16)])
def test_gather_gemv_compiled_matches_reference(t, d, f, e, k, dt):
    rng = np.random.default_rng(5)
    x = _normal(rng, (t, d), dt)
    wg, wu, wd = _normal(rng, (e, d, f), dt) * 0.1, _normal(rng, (e, d, f), dt) * 0.1, _normal(rng, (e, f, d), dt)
    ids = jnp.asarray(np.stack([rng.permutation(e)[:k] for _ in range(t)]), jnp.int32)
    cw = jnp.asarray(rng.random((t, k)), jnp.float32)
    got = jax.jit(lambda *a: gather_gemv(*a, implementation="triton"))(x, ids, cw, wg, wu, wd)
    f32 = lambda a: a.astype(jnp.float32)
    want = gather_gemv_reference(f32(x), ids, cw, f32(wg), f32(wu), f32(wd))
    _close(got, want, 3e-2 if dt == jnp.bfloat16 else 1e-3, "gather_gemv")


@pytest.mark.parametrize("k,n", [(160, 480), (4096, 4096)])
def test_batch_invariant_matmul_and_rms_norm_compiled(k, n):
    rng = np.random.default_rng(6)
    x, w = _normal(rng, (37, k), jnp.float32), _normal(rng, (k, n), jnp.float32)
    mm = jax.jit(lambda x: bi.matmul(x, w, implementation="triton"))
    full = np.asarray(mm(x))
    _close(full, np.asarray(x, np.float64) @ np.asarray(w, np.float64), 1e-2, "matmul")
    for i in (0, 17, 36):
        np.testing.assert_array_equal(np.asarray(mm(x[i:i + 1]))[0], full[i])
    scale = _normal(rng, (k,), jnp.float32)
    rn = jax.jit(lambda x: bi.rms_norm(x, scale, implementation="triton"))
    full = np.asarray(rn(x))
    x64 = np.asarray(x, np.float64)
    want = x64 / np.sqrt((x64**2).mean(-1, keepdims=True) + 1e-6) * np.asarray(scale)
    _close(full, want, 1e-5, "rms_norm")
    np.testing.assert_array_equal(np.asarray(rn(x[5:6]))[0], full[5])


def test_decode_compiled_ring_cache_row_map():
    """The engine's use: a wrapped ring cache read through its row -> position map, window + sinks."""
    rng = np.random.default_rng(7)
    b, s, t, h, kvh, hd = 4, 4, 1024, 8, 2, 80
    q, k, v = _normal(rng, (b, s, h, hd), jnp.float32), *(_normal(rng, (b, t, kvh, hd), jnp.float32) for _ in "kv")
    kv_pos = np.stack([rng.permutation(t) + 3 * t for _ in range(b)]).astype(np.int32)  # wrapped: positions > rows
    kv_pos[1, rng.random(t) < 0.3] = -1  # empty rows
    q_pos = np.max(kv_pos, axis=1, keepdims=True) - s + 1 + np.arange(s, dtype=np.int32)[None]
    kw = dict(q_positions=q_pos, kv_positions=kv_pos, window=500, sinks=0)
    rows = jnp.full((b,), t, jnp.int32)
    got = jax.jit(lambda *a: decode_attention(*a, implementation="triton", **kw))(q, k, v, rows)
    _close(got, decode_attention_reference(q, k, v, rows, **kw), 1e-2, "ring")
