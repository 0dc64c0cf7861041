"""Training-time input corruption that makes a model robust to what it will hear when serving.

`mute_self_audio`: in a live session the model hears its *own generated* voice on the
model-audio input stream, which a small or young flow head renders far from the speech it was
trained on; a model whose text leans on that stream then derails as soon as it speaks
(`experiments/delegation`: requests copied exactly 98% of the time when it hears the target
speech, 23% when it hears itself). Muting that stream for a random subset of training windows
teaches the text to follow the text stream, and with `inference.self_audio=silence` serving
feeds exactly the muted condition.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from interaction_jax.features.mel import DMEL_SILENCE_CODE as SILENCE_CODE
from interaction_jax.streams.layout import Kind


def check_self_audio_dropout(prob: float) -> float:
    if not 0.0 <= prob <= 1.0:
        raise ValueError(f"train.self_audio_dropout must be in [0, 1], got {prob}")
    return prob


def mute_self_audio(batch: dict, rng: jax.Array, prob: float) -> dict:
    """`batch` with the model-audio *inputs* of each example set to silence with probability `prob`.

    Whole windows are muted (not single positions), so "never hears itself" — what serving with
    `inference.self_audio=silence` feeds — is a condition seen in training. Targets are untouched.
    """
    if check_self_audio_dropout(prob) == 0.0:
        return batch
    drop = jax.random.bernoulli(rng, prob, (batch["dmel"].shape[0],))
    mask = drop[:, None] & (batch["kinds"] == int(Kind.MODEL_AUDIO))
    dmel = jnp.where(mask[:, :, None, None], jnp.asarray(SILENCE_CODE, batch["dmel"].dtype), batch["dmel"])
    return {**batch, "dmel": dmel}
