"""Shared helpers: backend choice for the dispatchers, padding, and numeric constants.

Every op exposes `op(..., implementation=None)`. `implementation` is one of

* ``None``        -- pick from `jax.default_backend()`: "triton" on GPU, "mosaic" on TPU, and the
                     pure-JAX reference on CPU (interpret mode is a debugging tool, not a fast path);
* ``"reference"`` -- the pure-JAX reference;
* ``"interpret"`` -- the Pallas kernel run by the Pallas interpreter (what the CPU tests use);
* ``"triton"`` / ``"mosaic"`` -- the compiled kernel for GPU / TPU;
* ``"mosaic_interpret"`` -- a Mosaic (TPU) kernel run by the TPU interpreter on CPU (tests);
                     ops without a Mosaic variant use their reference for both Mosaic names.

Keeping the choice in one function means every op agrees on the names and on the CPU fallback,
and that fallback is announced once per op (`KernelFallbackWarning`) rather than taken silently.
"""

from __future__ import annotations

import sys
import warnings

import jax
import jax.numpy as jnp

IMPLEMENTATIONS = ("reference", "interpret", "triton", "mosaic", "mosaic_interpret")
MOSAIC = ("mosaic", "mosaic_interpret")

# Masked logits are set to this finite value (not -inf) so that max/exp never see inf - inf.
NEG_INF = -1e30


class KernelFallbackWarning(UserWarning):
    """A Pallas kernel was asked for (implementation=None) but the backend has none: the reference ran."""


_WARNED: set[str] = set()

# Ops whose implementation=None on a backend without kernels runs the kernel in the Pallas
# interpreter (not the reference); they resolve through here but never fall back to the reference.
_INTERPRET_ON_CPU = frozenset({"batch_invariant.attention"})


def _caller_op(depth: int = 2) -> str:
    """`module.function` of the op calling `resolve_implementation` (e.g. "flash_attention.flash_attention")."""
    frame = sys._getframe(depth)
    module = frame.f_globals.get("__name__", "?").removeprefix("pallas_kernels.")
    return f"{module}.{frame.f_code.co_name}"


def resolve_implementation(implementation: str | None, op: str | None = None) -> str:
    """Maps `implementation` (or the default backend when None) to one of IMPLEMENTATIONS.

    A kernel requested by default (None) on a backend without one (CPU) runs the reference; that
    is announced once per op (`KernelFallbackWarning`), so a benchmark or training run that meant
    to use a kernel never measures the reference silently. `op` defaults to the calling function.
    """
    if implementation is None:
        backend = jax.default_backend()
        impl = {"gpu": "triton", "cuda": "triton", "rocm": "triton", "tpu": "mosaic"}.get(backend, "reference")
        if impl == "reference":
            op = op or _caller_op()
            if op not in _WARNED and op not in _INTERPRET_ON_CPU:
                _WARNED.add(op)
                warnings.warn(
                    f"pallas_kernels.{op}: no Pallas kernel for the {backend!r} backend; implementation=None ran "
                    "the pure-JAX reference instead (pass implementation='interpret' to run the kernel in the "
                    "Pallas interpreter, or 'reference' to choose the reference without this warning)",
                    KernelFallbackWarning,
                    stacklevel=3,
                )
        return impl
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"unknown implementation {implementation!r}; expected None or one of {IMPLEMENTATIONS}")
    return implementation


def is_interpret(implementation: str) -> bool:
    """The `interpret=` flag for pl.pallas_call given a resolved kernel implementation."""
    if implementation not in ("interpret", "triton", "mosaic"):
        raise ValueError(f"{implementation!r} is not a kernel implementation")
    return implementation == "interpret"


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def pad_axis(x: jax.Array, axis: int, size: int, value=0) -> jax.Array:
    """Pads `x` along `axis` up to `size` with `value` (no-op when already that size)."""
    extra = size - x.shape[axis]
    if extra < 0:
        raise ValueError(f"cannot pad axis {axis} of size {x.shape[axis]} down to {size}")
    if extra == 0:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, extra)
    return jnp.pad(x, widths, constant_values=value)


def head_dim_block(n: int) -> int:
    """Smallest power of two >= max(n, 16): a feature axis a Triton block can load whole."""
    return max(16, 1 << (max(n, 1) - 1).bit_length())
