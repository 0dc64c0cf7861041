"""Pallas kernels with pure-JAX references and backend dispatchers (see docs/kernels.md).

One module per op; each exposes `op(..., implementation=None)` and `op_reference(...)`.
A standalone library: it imports nothing from `interaction_jax`; `interaction_jax.model.kernels`
registers the kernels the model uses in its attention, expert and cache-attention registries.
"""

from pallas_kernels.flash_attention import flash_attention, flash_attention_reference

__all__ = ["flash_attention", "flash_attention_reference"]
