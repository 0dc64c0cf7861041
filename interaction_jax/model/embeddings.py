"""Input embeddings: one vector per packed position, whatever its modality.

Per position:  kind embedding  +  content  (+ optional sinusoidal time embedding), where the
content is chosen by the position's kind:

  * text kinds (user text, background, model text): the text token embedding,
  * with `model.user_speech_feedback`, user-audio positions: also the text embedding of their
    token id, the transcript the same slot wrote one micro-turn earlier (`user_speech_feedback`
    in interaction_model.py),
  * audio kinds (user audio, model audio): the dMel bag (Bai et al. 2024) of the position's
    F frames x M mel channels: each channel m has its own table of `bins` (16) rows and the
    position's vector is  sum_f sum_m table[m, code[f, m]]  — no audio encoder at all (or, with
    `model.dmel_embed="frames_mlp"`, per-frame bags concatenated through a small MLP),
  * video: the hMLP embedding of the position's 40x40 patch, or a learned "no frame" vector
    in micro-turns where no frame arrived (`video_present` False).

Scale convention: every content embedding is ~unit RMS at init (text: table std 1/sqrt(D)
times sqrt(D), Gemma style, so the same table serves as a tied unembedding with O(1)
logits; dMel: table std 1/sqrt(F*M) so the sum of F*M rows is ~unit; hMLP ends in a
LayerNorm). Video positions are matched to patches by order: the k-th VIDEO position of a
block takes flattened patch k of the block's `patches` [B, W, V, ...]. For a full window this
is exactly the static scatter to `layout.kind_indices(Kind.VIDEO, W)`; for a streaming block
it works for any contiguous run of positions that holds whole micro-turns' video blocks.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from interaction_jax.model.hmlp import HMLPStem
from interaction_jax.model.layers import matmul, param, sinusoidal
from interaction_jax.streams.layout import AUDIO_KINDS, NUM_KINDS, TEXT_KINDS, Kind


def _is_any(kinds: jax.Array, values) -> jax.Array:
    return jnp.isin(kinds, jnp.asarray([int(v) for v in values], jnp.int32))


class TextEmbedding(nnx.Module):
    """Token table [V, D]; `embed` for inputs (x sqrt(D)), `attend` for a tied unembedding."""

    def __init__(self, vocab_size: int, d_model: int, *, dtype=jnp.float32, param_dtype=jnp.float32,
                 batch_invariant: bool = False, rngs: nnx.Rngs):
        self.d_model = d_model
        self.dtype = dtype
        self.batch_invariant = bool(batch_invariant)
        init = nnx.initializers.normal(stddev=d_model**-0.5)
        self.table = param(rngs, init, (vocab_size, d_model), ("vocab", "embed"), param_dtype)

    def embed(self, ids: jax.Array) -> jax.Array:
        rows = jnp.take(self.table[...], ids, axis=0).astype(self.dtype)
        return rows * jnp.asarray(self.d_model**0.5, self.dtype)

    def attend(self, h: jax.Array) -> jax.Array:
        """Tied logits h @ table^T, in float32."""
        if self.batch_invariant:
            return matmul(h.astype(jnp.float32), self.table[...].astype(jnp.float32).T, True)
        return jnp.einsum("...d,vd->...v", h.astype(jnp.float32), self.table[...].astype(jnp.float32))


class DMelBag(nnx.Module):
    """dMel codes [..., F, M] (ints in [0, bins)) -> sum over frames and channels of table rows [..., D].

    Computed as (per-channel bin counts over the F frames) @ table, i.e. a one-hot matmul
    [.., M*bins] x [M*bins, D]: the same sum as gathering F*M rows, without materialising
    a [.., F, M, D] intermediate, and with a dense gradient for the table.
    """

    def __init__(
        self,
        n_mels: int,
        d_model: int,
        *,
        bins: int = 16,
        frames: int = 4,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        batch_invariant: bool = False,
        rngs: nnx.Rngs,
    ):
        self.bins = bins
        self.dtype = dtype
        self.batch_invariant = bool(batch_invariant)
        init = nnx.initializers.normal(stddev=(frames * n_mels) ** -0.5)
        self.table = param(rngs, init, (n_mels, bins, d_model), ("channels", "bins", "embed"), param_dtype)

    def __call__(self, codes: jax.Array) -> jax.Array:
        counts = jnp.sum(jax.nn.one_hot(codes.astype(jnp.int32), self.bins, dtype=self.dtype), axis=-3)
        if self.batch_invariant:
            table = self.table[...].astype(self.dtype)
            flat = counts.reshape(counts.shape[:-2] + (-1,))
            return matmul(flat, table.reshape(-1, table.shape[-1]), True)
        return jnp.einsum("...mk,mkd->...d", counts, self.table[...].astype(self.dtype))


class DMelFramesMLP(nnx.Module):
    """dMel codes [..., F, M] -> [..., D] keeping the order of the F frames (`model.dmel_embed="frames_mlp"`).

    Each frame is a bag over its channels (a [M, bins, width] table, as `DMelBag` but per frame),
    the F frame vectors are concatenated and a GELU MLP maps them to D. Why: the bag sums the
    frames of a position (its 50 ms lose their order) and is linear in the codes, so every step of
    recognising a sound from the codes is left to the shared backbone layers; this gives each audio
    position a small encoder of its own at the cost of two matmuls per position.
    """

    def __init__(self, n_mels: int, d_model: int, *, bins: int = 16, frames: int = 4, width: int = 64,
                 hidden: int = 512, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
        self.bins, self.frames, self.dtype = bins, frames, dtype
        self.table = param(rngs, nnx.initializers.normal(stddev=n_mels ** -0.5), (n_mels, bins, width),
                           ("channels", "bins", None), param_dtype)
        self.w_in = param(rngs, nnx.initializers.normal(stddev=(frames * width) ** -0.5), (frames * width, hidden),
                          (None, "mlp"), param_dtype)
        self.b_in = param(rngs, nnx.initializers.zeros, (hidden,), ("mlp",), param_dtype)
        self.w_out = param(rngs, nnx.initializers.normal(stddev=hidden ** -0.5), (hidden, d_model), ("mlp", "embed"),
                           param_dtype)

    def __call__(self, codes: jax.Array) -> jax.Array:
        onehot = jax.nn.one_hot(codes.astype(jnp.int32), self.bins, dtype=self.dtype)  # [..., F, M, bins]
        frames = jnp.einsum("...fmk,mkw->...fw", onehot, self.table[...].astype(self.dtype))
        flat = frames.reshape(frames.shape[:-2] + (-1,))
        h = jax.nn.gelu(flat @ self.w_in[...].astype(self.dtype) + self.b_in[...].astype(self.dtype))
        return h @ self.w_out[...].astype(self.dtype)


DMEL_EMBEDS = ("bag", "frames_mlp")


class InputEmbedding(nnx.Module):
    """A packed batch (or streaming block) -> input vectors [B, L, D]; see the module docstring."""

    def __init__(
        self,
        *,
        d_model: int,
        vocab_size: int,
        n_mels: int,
        frames_per_position: int,
        dmel_bins: int,
        patch_size: int,
        video_patches: int,
        time_embedding: bool,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        batch_invariant: bool = False,
        hmlp_gelu: str = "tanh",
        hmlp_norm_eps: float = 1e-6,
        dmel_embed: str = "bag",
        dmel_frame_width: int = 64,
        dmel_mlp_hidden: int = 512,
        user_speech_feedback: bool = False,
        video_channels: int = 3,
        rngs: nnx.Rngs,
    ):
        self.d_model = d_model
        self.dtype = dtype
        self.use_time = bool(time_embedding)
        # USER_AUDIO positions also take the text embedding of their token id (the fed-back transcript)
        self.user_speech_feedback = bool(user_speech_feedback)
        self.token_kinds = TEXT_KINDS + ((Kind.USER_AUDIO,) if self.user_speech_feedback else ())
        bi = bool(batch_invariant)
        self.text = TextEmbedding(vocab_size, d_model, dtype=dtype, param_dtype=param_dtype, batch_invariant=bi,
                                  rngs=rngs)
        if dmel_embed not in DMEL_EMBEDS:
            raise ValueError(f"model.dmel_embed={dmel_embed!r}; expected one of {DMEL_EMBEDS}")
        if dmel_embed == "frames_mlp":
            if bi:
                raise ValueError("model.dmel_embed='frames_mlp' has no batch-invariant form; use 'bag' with "
                                 "model.batch_invariant=True")
            self.dmel = DMelFramesMLP(n_mels, d_model, bins=dmel_bins, frames=frames_per_position,
                                      width=dmel_frame_width, hidden=dmel_mlp_hidden, dtype=dtype,
                                      param_dtype=param_dtype, rngs=rngs)
        else:
            self.dmel = DMelBag(
                n_mels,
                d_model,
                bins=dmel_bins,
                frames=frames_per_position,
                dtype=dtype,
                param_dtype=param_dtype,
                batch_invariant=bi,
                rngs=rngs,
            )
        self.kind = param(rngs, nnx.initializers.normal(1.0), (NUM_KINDS, d_model), ("kinds", "embed"), param_dtype)
        if video_patches > 0:
            self.hmlp = HMLPStem(d_model, patch_size=patch_size, in_channels=video_channels, dtype=dtype,
                                 param_dtype=param_dtype,
                                 batch_invariant=bi, gelu=hmlp_gelu, norm_eps=hmlp_norm_eps, rngs=rngs)
            self.no_frame = param(rngs, nnx.initializers.normal(1.0), (d_model,), ("embed",), param_dtype)
        else:
            self.hmlp = None
            self.no_frame = None

    def video(self, patches: jax.Array, present: jax.Array, kinds: jax.Array) -> jax.Array:
        """Per-position video embeddings [B, L, D] (zeros off VIDEO positions)."""
        b, w, v = patches.shape[:3]
        emb = self.hmlp(patches)  # [B, W, V, D]
        emb = jnp.where(present[:, :, None, None], emb, self.no_frame[...].astype(self.dtype))
        emb = emb.reshape(b, w * v, -1)
        is_video = kinds == int(Kind.VIDEO)
        ordinal = jnp.clip(jnp.cumsum(is_video, axis=1) - 1, 0, max(w * v - 1, 0))
        gathered = jnp.take_along_axis(emb, ordinal[..., None], axis=1)
        return jnp.where(is_video[..., None], gathered, 0)

    def __call__(self, batch: dict) -> jax.Array:
        kinds = batch["kinds"].astype(jnp.int32)
        x = jnp.take(self.kind[...], kinds, axis=0).astype(self.dtype)
        text = self.text.embed(batch["token_ids"])
        x = x + jnp.where(_is_any(kinds, self.token_kinds)[..., None], text, 0)
        audio = self.dmel(batch["dmel"])
        x = x + jnp.where(_is_any(kinds, AUDIO_KINDS)[..., None], audio, 0)
        patches = batch.get("patches")
        if self.hmlp is not None and patches is not None and patches.shape[1] * patches.shape[2] > 0:
            x = x + self.video(patches, batch["video_present"], kinds)
        if self.use_time:
            x = x + sinusoidal(batch["micro_turn"], self.d_model).astype(self.dtype)
        return x
