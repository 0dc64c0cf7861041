"""Pallas kernels with pure-JAX references and backend dispatchers (see docs/kernels.md).

One module per op; each exposes `op(..., implementation=None)` and `op_reference(...)`.
`pallas_kernels.register` plugs the kernels into the model's attention / expert registries.
"""

from pallas_kernels.flash_attention import flash_attention, flash_attention_reference

__all__ = ["flash_attention", "flash_attention_reference"]
