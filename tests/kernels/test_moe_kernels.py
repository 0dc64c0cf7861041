"""MoE grouped matmul and gather+gemv (interpret mode) vs per-row / per-token references."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from interaction_jax.model.moe.experts import ExpertWeights, expert_compute
from interaction_jax.model.moe.router import route
from pallas_kernels.gather_gemv import gather_gemv
from pallas_kernels.grouped_matmul import gmm


def _per_row_gmm(lhs, rhs, group_sizes):
    """Independent reference: row r uses rhs[group of r]; rows past the groups give 0."""
    m = lhs.shape[0]
    gid = np.repeat(np.arange(len(group_sizes)), group_sizes)
    valid = np.zeros(m, bool)
    valid[: len(gid)] = True
    gid = np.concatenate([gid, np.zeros(m - len(gid), int)])
    out = jnp.einsum("mk,mkn->mn", lhs, rhs[gid], precision="highest")
    return jnp.where(valid[:, None], out, 0.0)


def _with_grads(fn, lhs, rhs, ct):
    def run(lhs, rhs):
        out, vjp = jax.vjp(fn, lhs, rhs)
        return (out, *vjp(ct))

    return [np.asarray(x) for x in jax.jit(run)(lhs, rhs)]


@settings(max_examples=3, deadline=None)
@given(m=st.integers(1, 50), k=st.integers(3, 40), n=st.integers(3, 40), g=st.integers(1, 6),
       seed=st.integers(0, 999))
def test_gmm_fwd_and_grads_ragged_and_empty_groups(m, k, n, g, seed):
    rng = np.random.default_rng(seed)
    cuts = np.sort(rng.integers(0, m + 1, size=g))  # some groups empty, total may be < m
    sizes = np.diff(np.concatenate([[0], cuts])).astype(np.int32)
    sizes[rng.integers(0, g)] = 0
    lhs = rng.standard_normal((m, k)).astype(np.float32)
    rhs = rng.standard_normal((g, k, n)).astype(np.float32)
    ct = rng.standard_normal((m, n)).astype(np.float32)
    got = _with_grads(lambda a, b: gmm(a, b, jnp.asarray(sizes), block_m=16, block_n=16, block_k=16,
                                       implementation="interpret"), lhs, rhs, ct)
    want = _with_grads(lambda a, b: _per_row_gmm(a, b, sizes), lhs, rhs, ct)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4)
    empty = np.flatnonzero(sizes == 0)
    assert np.all(got[2][empty] == 0)  # empty experts get exactly zero weight gradient


def _moe_case(seed, t, d, f, e, k):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal((t, d)), jnp.float32)
    routing = route(jnp.asarray(rng.standard_normal((t, e)), jnp.float32), k)
    w = ExpertWeights(*(jnp.asarray(rng.standard_normal(s) * 0.3, jnp.float32) for s in ((e, d, f), (e, d, f),
                                                                                        (e, f, d))))
    return x, routing, w


def _per_token(x, routing, w):
    """numpy loop: y[t] = sum_j weight * SwiGLU_{expert}(x[t])."""
    x, ids, cw = (np.asarray(a, np.float64) for a in (x, routing.expert_ids, routing.weights))
    wg, wu, wd = (np.asarray(a, np.float64) for a in w)
    y = np.zeros_like(x)
    for t in range(x.shape[0]):
        for j in range(ids.shape[1]):
            e = int(ids[t, j])
            a, b = x[t] @ wg[e], x[t] @ wu[e]
            y[t] += cw[t, j] * ((a / (1 + np.exp(-a)) * b) @ wd[e])
    return y


@pytest.mark.parametrize("impl", ["pallas_gmm_interpret", "gather_gemv_interpret"])
def test_expert_impls_match_per_token_reference(impl):
    x, routing, w = _moe_case(3, 7, 24, 40, 8, 3)
    got = jax.jit(lambda x, r, w: expert_compute(x, r, w, impl))(x, routing, w)
    np.testing.assert_allclose(np.asarray(got), _per_token(x, routing, w), atol=1e-4, rtol=1e-4)


@settings(max_examples=2, deadline=None)
@given(t=st.sampled_from([1, 4]), k=st.sampled_from([1, 8]), seed=st.integers(0, 99))
def test_gather_gemv_decode_shapes(t, k, seed):
    x, routing, w = _moe_case(seed, t, 16, 32, 16, k)
    got = gather_gemv(x, routing.expert_ids, routing.weights, *w, block_f=16, block_d=16, implementation="interpret")
    np.testing.assert_allclose(np.asarray(got), _per_token(x, routing, w), atol=1e-4, rtol=1e-4)


def test_registered_impls_dispatch_on_cpu():
    """The model's registry finds the kernel impls lazily; on CPU they fall back to the references."""
    x, routing, w = _moe_case(4, 5, 8, 16, 4, 2)
    want = _per_token(x, routing, w)
    for impl in ("pallas_gmm", "gather_gemv"):
        np.testing.assert_allclose(np.asarray(expert_compute(x, routing, w, impl)), want, atol=1e-4, rtol=1e-4)
    g = jax.grad(lambda w: expert_compute(x, routing, w, "pallas_gmm").sum())(w)
    g_ref = jax.grad(lambda w: expert_compute(x, routing, w, "gather").sum())(w)
    for a, b in zip(g, g_ref):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-4, rtol=1e-4)


@pytest.mark.gpu
@pytest.mark.skipif(jax.default_backend() != "gpu", reason="needs a GPU")
def test_moe_kernels_compiled_gpu():
    x, routing, w = _moe_case(5, 64, 256, 512, 16, 4)
    want = _per_token(x, routing, w)
    for impl in ("pallas_gmm", "gather_gemv"):  # TF32 dots: compare against the output's scale
        got = np.asarray(expert_compute(x, routing, w, impl))
        assert np.max(np.abs(got - want)) <= 1e-2 * np.max(np.abs(want)), impl


@pytest.mark.parametrize("m,k,n,sizes", [(50, 40, 24, [0, 7, 30, 0, 9]), (19, 130, 200, [19]), (33, 16, 16, [5, 0, 0])])
def test_gmm_mosaic_in_tpu_interpreter_fwd_and_grads(m, k, n, sizes):
    """The TPU (Mosaic) grouped matmul in the TPU interpreter vs the per-row reference: empty groups,
    row tiles straddling groups, rows past the groups (zeros), K/N not multiples of the blocks."""
    from pallas_kernels.grouped_matmul_mosaic import gmm_mosaic

    rng = np.random.default_rng(m)
    sizes = np.asarray(sizes, np.int32)
    lhs = rng.standard_normal((m, k)).astype(np.float32)
    rhs = rng.standard_normal((len(sizes), k, n)).astype(np.float32)
    ct = rng.standard_normal((m, n)).astype(np.float32)
    got = _with_grads(lambda a, b: gmm_mosaic(a, b, jnp.asarray(sizes), block_m=16, interpret=True), lhs, rhs, ct)
    want = _with_grads(lambda a, b: _per_row_gmm(a, b, sizes), lhs, rhs, ct)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4)
    via_dispatch = gmm(lhs, rhs, jnp.asarray(sizes), block_m=16, implementation="mosaic_interpret")
    np.testing.assert_allclose(np.asarray(via_dispatch), want[0], atol=1e-4, rtol=1e-4)
