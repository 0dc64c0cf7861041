"""Model FLOPs and hardware peak, for MFU (model FLOPs utilisation).

Peak: on CPU it is *measured* at start-up with a short matmul probe (the machine's achievable
dense f32 matmul rate); on GPU/TPU it is the published dense bf16 peak for the device kind.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

# Published dense bf16 peaks (FLOP/s) per device, by substring of `device_kind`.
PUBLISHED_PEAKS = {
    "H200": 989e12,
    "H100": 989e12,
    "A100": 312e12,
    "L4": 121e12,
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5e": 197e12,
    "TPU v5p": 459e12,
    "TPU v5": 459e12,
    "TPU v6 lite": 918e12,
    "TPU v6e": 918e12,
}


def measure_matmul_peak(n: int = 2048, repeats: int = 8, dtype=jnp.float32) -> float:
    """Best-of-`repeats` FLOP/s of an n x n x n matmul on the default device."""
    a = jnp.ones((n, n), dtype)
    b = jnp.ones((n, n), dtype)
    f = jax.jit(lambda x, y: x @ y)
    f(a, b).block_until_ready()
    best = np.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        f(a, b).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n**3 / best


def device_peak_flops(device=None) -> tuple[float, str]:
    """(peak FLOP/s per device, how it was obtained)."""
    device = device or jax.devices()[0]
    if device.platform == "cpu":
        return measure_matmul_peak(), "measured f32 matmul probe"
    for key, peak in PUBLISHED_PEAKS.items():
        if key.lower() in device.device_kind.lower():
            return peak, f"published peak for {device.device_kind}"
    return measure_matmul_peak(4096, dtype=jnp.bfloat16), f"measured bf16 probe on {device.device_kind}"


def transformer_train_flops_per_token(active_params: int, num_layers: int, seq_len: int, d_attn: int) -> float:
    """6 * N_active (forward+backward matmuls) + attention 12 * layers * seq * d_attn (PaLM appendix B).

    `d_attn` = num_heads * head_dim. Causal masking is not discounted (the convention MFU uses).
    """
    return 6.0 * active_params + 12.0 * num_layers * seq_len * d_attn
