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

Two details are options (`config.model.hmlp_gelu`, `config.model.hmlp_norm_eps`) because they
matter when porting torch weights: the paper's code uses torch's `nn.GELU()` (exact, erf) and
torch norms default to eps 1e-5; the defaults here stay the tanh-approximate GELU and eps 1e-6
(what existing checkpoints were trained with). The two differ by up to ~1e-3 per activation.
`load_torch_weights` takes the torch layout (conv weight [out, in, kh, kw]).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from interaction_jax.model.layers import LayerNorm, Linear

PIXEL_MEAN = 0.5
PIXEL_STD = 0.25
# Channels 3..5 of 6-channel patches are frame deltas (`features.video.with_delta`: (now - before) // 2 + 128).
DELTA_CENTER = 128.0
DELTA_STD = 32.0  # a lamp switching on (about 115 levels, stored as ~57) reads ~1.8; pixel noise ~0.1
GELU_FORMS = ("tanh", "exact")


def conv_weight_from_torch(w) -> jax.Array:
    """A stride == kernel conv weight in torch layout [out, in, kh, kw] -> this stem's matmul [kh*kw*in, out]."""
    w = jnp.asarray(w)
    if w.ndim != 4 or w.shape[2] != w.shape[3]:
        raise ValueError(f"hMLP: expected a torch conv weight [out, in, k, k], got shape {w.shape}")
    out, c_in, k, _ = w.shape
    return w.transpose(2, 3, 1, 0).reshape(k * k * c_in, out)  # tiles are flattened (row, col, channel)


def _tiles_to_channels(x: jax.Array, k: int) -> jax.Array:
    """[N, H, W, C] -> [N, H/k, W/k, k*k*C]: each non-overlapping k x k tile becomes one vector."""
    n, h, w, c = x.shape
    if h % k or w % k:
        raise ValueError(f"hMLP: spatial size {h}x{w} is not a multiple of the stage kernel {k}")
    x = x.reshape(n, h // k, k, w // k, k, c)
    x = x.transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(n, h // k, w // k, k * k * c)


class HMLPStem(nnx.Module):
    """Patches [..., P, P, C] (uint8 or float in [0, 1] x 255) -> embeddings [..., D].

    C is `in_channels`: 3 (RGB) or 6 (RGB and its frame delta, `layout.video_delta`). Works on any
    leading shape (any number of patches); each patch is processed independently.
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
        gelu: str = "tanh",
        norm_eps: float = 1e-6,
        in_channels: int = 3,
        rngs: nnx.Rngs,
    ):
        """`gelu`: "tanh" (approximate, the default) or "exact" (erf, the paper's); `norm_eps`: LayerNorm eps;
        `in_channels`: 3 (RGB) or 6 (RGB + frame delta)."""
        if in_channels not in (3, 6):
            raise ValueError(f"hMLP: in_channels must be 3 (RGB) or 6 (RGB + frame delta), got {in_channels}")
        self.in_channels = int(in_channels)
        if gelu not in GELU_FORMS:
            raise ValueError(f"hMLP: gelu must be one of {GELU_FORMS}, got {gelu!r}")
        if not norm_eps > 0:
            raise ValueError(f"hMLP: norm_eps must be positive, got {norm_eps}")
        self.gelu = gelu
        prod = 1
        for k in kernels:
            prod *= k
        if prod != patch_size:
            raise ValueError(f"hMLP: kernels {kernels} multiply to {prod}, not patch_size={patch_size}")
        self.patch_size = patch_size
        self.kernels = tuple(kernels)
        self.dtype = dtype
        widths = [max(d_model // 4, 1)] * (len(kernels) - 1) + [d_model]
        c_in = self.in_channels
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
            norms.append(LayerNorm(c_out, eps=float(norm_eps), param_dtype=param_dtype, batch_invariant=batch_invariant,
                                   rngs=rngs))
            c_in = c_out
        self.projs = nnx.List(projs)
        self.norms = nnx.List(norms)

    def load_torch_weights(self, convs: Sequence[tuple], norms: Sequence[tuple]) -> None:
        """Sets every stage from torch tensors (as numpy): convs [(weight [out, in, k, k], bias [out])], norms
        [(weight, bias)], in stage order (e.g. a torch hMLP stem's Conv2d / LayerNorm state_dict entries)."""
        if len(convs) != len(self.kernels) or len(norms) != len(self.kernels):
            raise ValueError(f"hMLP: expected {len(self.kernels)} conv and norm stages, got {len(convs)} and "
                             f"{len(norms)}")
        for i, ((w, b), (g, beta)) in enumerate(zip(convs, norms, strict=True)):
            proj, norm = self.projs[i], self.norms[i]
            w = conv_weight_from_torch(w)
            got = {"conv weight": w.shape, "conv bias": np.shape(b), "norm weight": np.shape(g),
                   "norm bias": np.shape(beta)}
            want = {"conv weight": proj.w.shape, "conv bias": proj.b.shape, "norm weight": norm.scale.shape,
                    "norm bias": norm.bias.shape}
            for name in got:
                if tuple(got[name]) != tuple(want[name]):
                    raise ValueError(f"hMLP: stage {i} {name}: shape {tuple(got[name])} (as this stem's layout), "
                                     f"expected {tuple(want[name])}")
            dt = proj.w[...].dtype
            proj.w[...] = w.astype(dt)
            proj.b[...] = jnp.asarray(b, dt)
            norm.scale[...] = jnp.asarray(g, dt)
            norm.bias[...] = jnp.asarray(beta, dt)

    def __call__(self, patches: jax.Array) -> jax.Array:
        lead = patches.shape[:-3]
        p = self.patch_size
        c = self.in_channels
        if patches.shape[-3:] != (p, p, c):
            raise ValueError(f"hMLP: expected patches [..., {p}, {p}, {c}], got {patches.shape}")
        x = patches.reshape((-1, p, p, c)).astype(jnp.float32)
        rgb = (x[..., :3] / 255.0 - PIXEL_MEAN) / PIXEL_STD
        x = rgb if c == 3 else jnp.concatenate([rgb, (x[..., 3:] - DELTA_CENTER) / DELTA_STD], axis=-1)
        x = x.astype(self.dtype)
        last = len(self.kernels) - 1
        for i, k in enumerate(self.kernels):
            x = self.norms[i](self.projs[i](_tiles_to_channels(x, k)))
            if i != last:
                x = jax.nn.gelu(x, approximate=self.gelu == "tanh")
        return x.reshape(lead + (x.shape[-1],))
