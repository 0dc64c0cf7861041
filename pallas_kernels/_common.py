"""Shared helpers: backend choice for the dispatchers, padding, and numeric constants.

Every op exposes `op(..., implementation=None)`. `implementation` is one of

* ``None``        -- pick from `jax.default_backend()`: "triton" on GPU, "mosaic" on TPU, and the
                     pure-JAX reference on CPU (interpret mode is a debugging tool, not a fast path);
* ``"reference"`` -- the pure-JAX reference;
* ``"interpret"`` -- the Pallas kernel run by the Pallas interpreter (what the CPU tests use);
* ``"triton"`` / ``"mosaic"`` -- the compiled kernel for GPU / TPU;
* ``"mosaic_interpret"`` -- a Mosaic (TPU) kernel run by the TPU interpreter on CPU (tests);
                     ops without a Mosaic variant use their reference for both Mosaic names.

Keeping the choice in one function means every op agrees on the names and on the CPU fallback.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

IMPLEMENTATIONS = ("reference", "interpret", "triton", "mosaic", "mosaic_interpret")
MOSAIC = ("mosaic", "mosaic_interpret")

# Masked logits are set to this finite value (not -inf) so that max/exp never see inf - inf.
NEG_INF = -1e30


def resolve_implementation(implementation: str | None) -> str:
    """Maps `implementation` (or the default backend when None) to one of IMPLEMENTATIONS."""
    if implementation is None:
        backend = jax.default_backend()
        return {"gpu": "triton", "cuda": "triton", "rocm": "triton", "tpu": "mosaic"}.get(backend, "reference")
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
