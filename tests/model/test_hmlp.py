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


def _torch_layout_weights(d, kernels=(4, 2, 5), seed=0, in_channels=3):
    """Random weights as a torch hMLP stem stores them: Conv2d [out, in, k, k] + bias, LayerNorm weight + bias."""
    rs = np.random.RandomState(seed)
    widths, c_in, convs, norms = [d // 4, d // 4, d], in_channels, [], []
    for k, c_out in zip(kernels, widths, strict=True):
        convs.append((rs.normal(0, 1 / np.sqrt(k * k * c_in), (c_out, c_in, k, k)).astype(np.float32),
                      rs.normal(0, 0.1, c_out).astype(np.float32)))
        norms.append((rs.uniform(0.5, 1.5, c_out).astype(np.float32), rs.normal(0, 0.1, c_out).astype(np.float32)))
        c_in = c_out
    return convs, norms


def _numpy_stem(patches, convs, norms, *, exact: bool, eps: float, kernels=(4, 2, 5)):
    """Independent reference in torch's NCHW layout: stride == kernel Conv2d, LayerNorm over channels, GELU."""
    from scipy.special import erf

    x = (patches.astype(np.float64) / 255.0 - 0.5) / 0.25
    if patches.shape[-1] == 6:  # RGB + frame delta (features.video.with_delta: change // 2 + 128), scaled by 32
        x[..., 3:] = (patches[..., 3:].astype(np.float64) - 128.0) / 32.0
    x = x.transpose(0, 3, 1, 2)  # NHWC -> NCHW
    for i, (k, (w, b), (g, beta)) in enumerate(zip(kernels, convs, norms, strict=True)):
        n, c, h, wd = x.shape
        tiles = x.reshape(n, c, h // k, k, wd // k, k)
        x = np.einsum("ocab,nciajb->noij", w.astype(np.float64), tiles) + b[None, :, None, None]
        mean = x.mean(axis=1, keepdims=True)
        var = ((x - mean) ** 2).mean(axis=1, keepdims=True)
        x = (x - mean) / np.sqrt(var + eps) * g[None, :, None, None] + beta[None, :, None, None]
        if i != len(kernels) - 1:
            if exact:
                x = 0.5 * x * (1 + erf(x / np.sqrt(2)))
            else:
                x = 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))
    return x[:, :, 0, 0]


@pytest.mark.parametrize("gelu,eps", [("exact", 1e-5), ("tanh", 1e-6)])
def test_torch_layout_weights_match_a_numpy_reference(gelu, eps):
    convs, norms = _torch_layout_weights(D)
    stem = HMLPStem(D, gelu=gelu, norm_eps=eps, rngs=nnx.Rngs(1))
    stem.load_torch_weights(convs, norms)
    x = _patches(3, seed=2)
    ref = _numpy_stem(x, convs, norms, exact=gelu == "exact", eps=eps)
    np.testing.assert_allclose(np.asarray(_apply(stem, x)), ref, atol=2e-5, rtol=1e-5)
    other = _numpy_stem(x, convs, norms, exact=gelu != "exact", eps=eps)
    assert np.max(np.abs(other - ref)) > 1e-4  # the GELU form is visible at this tolerance


def test_stem_options_are_config_keys_and_checked(tiny_config):
    assert tiny_config.model.hmlp_gelu == "tanh" and tiny_config.model.hmlp_norm_eps == 1e-6  # today's defaults
    with pytest.raises(ValueError, match="gelu must be one of"):
        HMLPStem(D, gelu="erf", rngs=nnx.Rngs(0))
    convs, norms = _torch_layout_weights(D)
    with pytest.raises(ValueError, match="stage 0 conv weight"):
        HMLPStem(D, rngs=nnx.Rngs(0)).load_torch_weights([(convs[0][0][:, :2], convs[0][1])] + convs[1:], norms)


def test_six_channel_stem_with_frame_deltas_matches_the_numpy_reference():
    """`in_channels=6` (layout.video_delta): RGB normalised as before, the delta channels centred on
    128 and scaled by 32; the same stride == kernel stages."""
    convs, norms = _torch_layout_weights(D, in_channels=6)
    stem = HMLPStem(D, in_channels=6, gelu="exact", norm_eps=1e-5, rngs=nnx.Rngs(1))
    stem.load_torch_weights(convs, norms)
    x = np.random.RandomState(4).randint(0, 256, (3, 40, 40, 6)).astype(np.uint8)
    ref = _numpy_stem(x, convs, norms, exact=True, eps=1e-5)
    np.testing.assert_allclose(np.asarray(_apply(stem, x)), ref, atol=2e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="40, 40, 6"):
        jax.eval_shape(lambda p: stem(p), jnp.zeros((2, 40, 40, 3), jnp.uint8))
    with pytest.raises(ValueError, match="in_channels must be 3"):
        HMLPStem(D, in_channels=4, rngs=nnx.Rngs(0))
