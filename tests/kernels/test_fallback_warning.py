"""A kernel asked for by default on a backend without one runs the reference, and says so once per op."""

import warnings

import jax
import jax.numpy as jnp
import pytest

from pallas_kernels import _common
from pallas_kernels.batch_invariant import rms_norm
from pallas_kernels.flash_attention import flash_attention

pytestmark = pytest.mark.skipif(jax.default_backend() != "cpu", reason="the fallback is the CPU path")


def test_default_implementation_on_cpu_warns_once_per_op(monkeypatch):
    monkeypatch.setattr(_common, "_WARNED", set())
    q = jnp.ones((1, 16, 2, 16))
    with pytest.warns(_common.KernelFallbackWarning, match=r"flash_attention\.flash_attention: .*'cpu'.*reference"):
        flash_attention(q, q, q)
    with pytest.warns(_common.KernelFallbackWarning, match=r"batch_invariant\.rms_norm: .*reference"):
        rms_norm(jnp.ones((2, 8)), jnp.ones(8))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per op; an explicit choice never warns
        flash_attention(q, q, q)
        flash_attention(q, q, q, implementation="reference")
        rms_norm(jnp.ones((2, 8)), jnp.ones(8), implementation="reference")
