"""The model's Pallas attention gets the mask's structure: it matches jax.nn.dot_product_attention
(forward and gradient) with causal / window / sinks / segments / unwritten keys, and its traced and
lowered program holds no [L, L] mask. The kernel runs in Pallas interpret mode (CPU)."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from interaction_jax.model.attention import Attention, attention

# L > the kernel's 128-blocks, so the kernel loops over two q and two kv blocks (and skips one).
B, L, H, KVH, HD = 1, 160, 2, 1, 16
PADDED = 256  # L rounded up to the kernel's blocks


def _qkv(seed):
    k1, k2, k3, k4 = jax.random.split(jax.random.key(seed), 4)
    return (jax.random.normal(k1, (B, L, H, HD)), jax.random.normal(k2, (B, L, KVH, HD)),
            jax.random.normal(k3, (B, L, KVH, HD)), jax.random.normal(k4, (B, L, H, HD)))


def _loop_mask(pos, seg, valid, window, sinks):
    """[B, L, L] visibility written out element by element (independent of the model's make_mask)."""
    m = np.zeros((B, L, L), bool)
    for b in range(B):
        for i in range(L):
            for j in range(L):
                d = pos[b, i] - pos[b, j]
                m[b, i, j] = (seg[b, i] == seg[b, j] and d >= 0 and valid[b, j]
                              and (window == 0 or d < window or pos[b, j] < sinks))
    return m


CASES = {  # name: (window, sinks, segments, some keys unwritten)
    "causal": (0, 0, False, False),
    "window": (50, 0, False, False),
    "window_sinks": (50, 4, False, False),
    "segments_window": (30, 2, True, False),
    "unwritten_keys": (0, 0, False, True),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_kernel_matches_dot_product_attention_fwd_and_grad(case):
    window, sinks, segmented, unwritten = CASES[case]
    q, k, v, ct = _qkv(len(case))
    seg = np.zeros((B, L), np.int32)
    pos = np.broadcast_to(np.arange(L, dtype=np.int32), (B, L)).copy()
    if segmented:  # two packed sequences, positions restart at the second
        seg[:, 70:] = 1
        pos[:, 70:] -= 70
    valid = np.ones((B, L), bool)
    if unwritten:
        valid[:, 3::7] = False
        valid[:, 0] = True  # every query sees at least key 0
    mask = _loop_mask(pos, seg, valid, window, sinks)
    kw = dict(q_positions=pos, kv_positions=pos, window=window, sinks=sinks)
    if segmented:
        kw.update(q_segment_ids=seg, kv_segment_ids=seg)
    if unwritten:
        kw.update(kv_valid=valid)
    else:
        kw.update(ordered=True)  # one sequence, positions increasing within a segment: index bounds

    def ours(q, k, v):
        return jnp.sum(attention(q, k, v, impl="pallas_interpret", **kw) * ct)

    def ref(q, k, v):
        return jnp.sum(jax.nn.dot_product_attention(q, k, v, mask=mask[:, None]) * ct)

    (got, got_g), (want, want_g) = (jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2)))(q, k, v) for f in (ours, ref))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-3)
    for g, w in zip(got_g, want_g):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=2e-4)


def _square_arrays(jaxpr, sizes) -> list:
    """Avals anywhere in `jaxpr` (sub-jaxprs included) whose last two dims are (n, n), n in sizes."""
    found = []

    def walk(jx):
        for var in list(jx.invars) + list(jx.constvars) + [o for e in jx.eqns for o in e.outvars]:
            shape = getattr(var.aval, "shape", ())
            if len(shape) >= 2 and shape[-1] == shape[-2] and shape[-1] in sizes:
                found.append(var.aval)
        for eqn in jx.eqns:
            for sub in jax.core.jaxprs_in_params(eqn.params):
                walk(sub)

    walk(jaxpr.jaxpr)
    return found


def _training_grad(impl):
    """Gradient of the model's Attention module over a training window (window + sinks)."""
    attn = Attention(32, H, KVH, HD, window=50, sinks=4, impl=impl, rngs=nnx.Rngs(0))
    graph, params = nnx.split(attn)
    x = jax.random.normal(jax.random.key(1), (B, L, 32))
    pos = jnp.broadcast_to(jnp.arange(L), (B, L))

    def loss(params, x):
        return jnp.sum(nnx.merge(graph, params)(x, pos) ** 2)

    return jax.grad(loss, argnums=(0, 1)), (params, x)


def test_kernel_path_holds_no_dense_mask():
    f, args = _training_grad("pallas_interpret")
    assert _square_arrays(jax.make_jaxpr(f)(*args), {L, PADDED}) == []
    text = jax.jit(f).lower(*args).as_text()
    assert not re.search(rf"\b({L}x{L}|{PADDED}x{PADDED})x", text)
    # The detector finds the dense mask of the reference impl (so the check above can fail).
    f_xla, args = _training_grad("xla")
    assert any(a.dtype == jnp.bool_ for a in _square_arrays(jax.make_jaxpr(f_xla)(*args), {L}))
