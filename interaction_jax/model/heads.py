"""Text output head: logits over the text vocabulary from the backbone state.

With `tie_embeddings` the logits are h @ E^T with E the input text table (`TextEmbedding`,
std 1/sqrt(D) at init, so logits are O(1) for unit-RMS h); otherwise a separate [D, V]
projection. Logits are float32 regardless of the compute dtype (the softmax / cross-entropy
is where low precision hurts).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from interaction_jax.model.embeddings import TextEmbedding
from interaction_jax.model.layers import fan_in_init, matmul, param


class TextHead(nnx.Module):
    """h [..., D] -> logits [..., V] (float32); `tied` reuses the embedding passed at call time."""

    def __init__(self, d_model: int, vocab_size: int, *, tied: bool, param_dtype=jnp.float32,
                 batch_invariant: bool = False, rngs: nnx.Rngs):
        self.tied = bool(tied)
        self.batch_invariant = bool(batch_invariant)
        self.w = (
            None if tied else param(rngs, fan_in_init(d_model), (d_model, vocab_size), ("embed", "vocab"), param_dtype)
        )

    def __call__(self, h: jax.Array, embedding: TextEmbedding | None = None) -> jax.Array:
        if self.tied:
            if embedding is None:
                raise ValueError("TextHead(tied=True) needs the text embedding")
            return embedding.attend(h)
        if self.batch_invariant:
            return matmul(h.astype(jnp.float32), self.w[...].astype(jnp.float32), True)
        return jnp.einsum("...d,dv->...v", h.astype(jnp.float32), self.w[...].astype(jnp.float32))
