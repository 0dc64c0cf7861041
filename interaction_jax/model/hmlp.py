"""hMLP stem (Touvron et al. 2022, "Three things everyone should know about ViTs") for 40x40 patches.

The hMLP stem embeds each patch on its own: a stack of patch-local "convolutions" whose
stride equals their kernel, so a receptive field never crosses a patch boundary (and never a
sub-patch boundary of the previous stage). That is why the paper can mask patches before the
stem, and why here every 40x40 patch of a video frame is an independent token.

The paper's 16x16 stem is conv4x4/s4 -> norm -> GELU -> conv2x2/s2 -> norm -> GELU ->
conv2x2/s2 -> norm, widths (D/4, D/4, D). For 40x40 patches the kernels are (4, 2, 5):
40/4 = 10, 10/2 = 5, 5/5 = 1. A stride==kernel conv is a linear map applied to each
non-overlapping k x k tile, so each stage is implemented as "reshape tiles into the channel
axis, then one matmul": exact, cheap, and obviously free of cross-patch mixing. Norms are
LayerNorm over channels (the paper's BatchNorm would mix patches through batch statistics).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from interaction_jax.model.layers import LayerNorm, Linear

PIXEL_MEAN = 0.5
PIXEL_STD = 0.25


def _tiles_to_channels(x: jax.Array, k: int) -> jax.Array:
    """[N, H, W, C] -> [N, H/k, W/k, k*k*C]: each non-overlapping k x k tile becomes one vector."""
    n, h, w, c = x.shape
    if h % k or w % k:
        raise ValueError(f"hMLP: spatial size {h}x{w} is not a multiple of the stage kernel {k}")
    x = x.reshape(n, h // k, k, w // k, k, c)
    x = x.transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(n, h // k, w // k, k * k * c)


class HMLPStem(nnx.Module):
    """Patches [..., P, P, 3] (uint8 or float in [0, 1] x 255) -> embeddings [..., D].

    Works on any leading shape (any number of patches); each patch is processed independently.
    """

    def __init__(
        self,
        d_model: int,
        *,
        patch_size: int = 40,
        kernels: tuple[int, ...] = (4, 2, 5),
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        batch_invariant: bool = False,
        rngs: nnx.Rngs,
    ):
        prod = 1
        for k in kernels:
            prod *= k
        if prod != patch_size:
            raise ValueError(f"hMLP: kernels {kernels} multiply to {prod}, not patch_size={patch_size}")
        self.patch_size = patch_size
        self.kernels = tuple(kernels)
        self.dtype = dtype
        widths = [max(d_model // 4, 1)] * (len(kernels) - 1) + [d_model]
        c_in = 3
        projs, norms = [], []
        for i, (k, c_out) in enumerate(zip(kernels, widths, strict=True)):
            out_axis = "embed" if i == len(kernels) - 1 else "conv_out"
            projs.append(
                Linear(
                    k * k * c_in,
                    c_out,
                    ("conv_in", out_axis),
                    use_bias=True,
                    dtype=dtype,
                    param_dtype=param_dtype,
                    batch_invariant=batch_invariant,
                    rngs=rngs,
                )
            )
            norms.append(LayerNorm(c_out, param_dtype=param_dtype, batch_invariant=batch_invariant, rngs=rngs))
            c_in = c_out
        self.projs = nnx.List(projs)
        self.norms = nnx.List(norms)

    def __call__(self, patches: jax.Array) -> jax.Array:
        lead = patches.shape[:-3]
        p = self.patch_size
        if patches.shape[-3:] != (p, p, 3):
            raise ValueError(f"hMLP: expected patches [..., {p}, {p}, 3], got {patches.shape}")
        x = patches.reshape((-1, p, p, 3)).astype(jnp.float32)
        x = ((x / 255.0 - PIXEL_MEAN) / PIXEL_STD).astype(self.dtype)
        last = len(self.kernels) - 1
        for i, k in enumerate(self.kernels):
            x = self.norms[i](self.projs[i](_tiles_to_channels(x, k)))
            if i != last:
                x = jax.nn.gelu(x)
        return x.reshape(lead + (x.shape[-1],))
