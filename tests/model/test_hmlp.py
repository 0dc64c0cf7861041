"""hMLP stem: patch-local (permutation-equivariant, no cross-patch mixing), any patch count."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from interaction_jax.model.hmlp import HMLPStem

D = 16
_apply = nnx.jit(lambda stem, x: stem(x))


@pytest.fixture(scope="module")
def stem():
    return HMLPStem(D, rngs=nnx.Rngs(0))


def _patches(n, seed=0):
    return np.random.RandomState(seed).randint(0, 256, (n, 40, 40, 3)).astype(np.uint8)


def test_shapes_for_any_number_of_patches(stem):
    for lead in [(1,), (5,), (2, 3, 4), (0,)]:
        x = jnp.zeros(lead + (40, 40, 3), jnp.uint8)
        assert jax.eval_shape(lambda x: stem(x), x).shape == lead + (D,)
    assert _apply(stem, _patches(6)).shape == (6, D)


def test_permuting_patches_permutes_outputs(stem):
    x = _patches(6)
    perm = np.array([3, 0, 5, 1, 4, 2])
    y = np.asarray(_apply(stem, x))
    np.testing.assert_allclose(_apply(stem, x[perm]), y[perm], atol=1e-5)
    np.testing.assert_allclose(np.mean(y, -1), 0.0, atol=1e-5)  # final LayerNorm (scale 1, bias 0)


def test_no_cross_patch_mixing(stem):
    x = _patches(6, seed=1)
    y = np.asarray(_apply(stem, x))
    x2 = x.copy()
    x2[2] = 255 - x2[2]
    y2 = np.asarray(_apply(stem, x2))
    others = np.array([0, 1, 3, 4, 5])
    np.testing.assert_allclose(y2[others], y[others], atol=1e-6)
    assert np.max(np.abs(y2[2] - y[2])) > 1e-3


def test_gradients_reach_every_parameter(stem):
    g, p = nnx.split(stem)
    grads = jax.jit(jax.grad(lambda p: jnp.sum(nnx.merge(g, p)(_patches(2)) ** 3)))(p)
    assert all(float(np.linalg.norm(np.asarray(v))) > 0 for v in jax.tree.leaves(grads))


def test_wrong_patch_size_is_rejected(stem):
    with pytest.raises(ValueError, match="40, 40, 3"):
        jax.eval_shape(lambda x: stem(x), jnp.zeros((2, 32, 32, 3), jnp.uint8))
