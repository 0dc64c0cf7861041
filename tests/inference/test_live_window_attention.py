"""`live_window_attention` (row chunks of the stacked cache) against `jax.nn.dot_product_attention`
on the same rows with the mask written out from the positions: a "hard" cache whose last chunk
is clamped, a wrapped "sliding" ring with sinks, two slots of different lengths, a traced layer."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from interaction_jax.inference.cache import ContextPolicy
from interaction_jax.inference.engine import live_window_attention

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
        (ContextPolicy("hard", 4, 50, 296, 5, 60), (200, 290)),  # model window + sinks, hard (row == position)
        (ContextPolicy("sliding", 6, 40, 44, 5, None), (250, 17)),  # ring wrapped several times / barely used
    ],
)
def test_live_window_attention_matches_dense(policy, lengths):
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
    for layer in (0, 2):
        got = live_window_attention(q, q_pos, valid, k_all, v_all, layer, kv_pos, policy, block=64)
        want = _reference(q, q_pos, k_all[layer], v_all[layer], kv_pos, policy.window, policy.sinks)
        np.testing.assert_allclose(np.asarray(got)[valid], np.asarray(want)[valid], atol=2e-5, rtol=0)
    # a traced layer index (the engine's scan over stacked layers) reads the same rows
    traced = jax.jit(lambda i: live_window_attention(q, q_pos, valid, k_all, v_all, i, kv_pos, policy, block=64))(1)
    want = _reference(q, q_pos, k_all[1], v_all[1], kv_pos, policy.window, policy.sinks)
    np.testing.assert_allclose(np.asarray(traced)[valid], np.asarray(want)[valid], atol=2e-5, rtol=0)
