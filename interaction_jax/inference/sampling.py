"""Per-slot sampling pieces of the micro-turn step: RNG streams, text sampling, dMel in JAX.

Randomness is derived, never carried: the key of output position i of micro-turn t of a
session is fold_in(fold_in(session_key, t), i) (audio positions use i = AUDIO_KEY_OFFSET + j).
So a session's samples depend only on its own key and turn counter — never on the slot it
sits in or on which other sessions share the batch — and a reference can recompute them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from interaction_jax.features.mel import FeatureParams, dmel_codes

AUDIO_KEY_OFFSET = 1 << 16


def turn_keys(key_data: jax.Array, turn: jax.Array) -> jax.Array:
    """Typed keys [B] for micro-turn `turn` [B] of each slot's session (key_data [B, 2] uint32)."""
    keys = jax.random.wrap_key_data(key_data)
    return jax.vmap(jax.random.fold_in)(keys, turn)


def position_keys(tkeys: jax.Array, index: int) -> jax.Array:
    """Keys [B] of output position `index` (text slot i, or AUDIO_KEY_OFFSET + audio position j)."""
    return jax.vmap(lambda k: jax.random.fold_in(k, index))(tkeys)


def session_key_data(seed: int) -> jax.Array:
    """Raw key data [2] uint32 for a session seed."""
    return jax.random.key_data(jax.random.key(int(seed)))


def sample_text(logits: jax.Array, keys: jax.Array, temperature: jax.Array, top_p: jax.Array) -> jax.Array:
    """Tokens [B] from logits [B, V]: temperature + nucleus (top-p) sampling per slot; greedy where
    temperature <= 0. The top token is always kept, so top_p -> 0 is greedy as well."""

    def one(logit, key, temp, p):
        logit = logit.astype(jnp.float32)
        scaled = logit / jnp.maximum(temp, 1e-6)
        probs = jax.nn.softmax(scaled)
        sorted_probs = jnp.sort(probs)[::-1]
        before = jnp.cumsum(sorted_probs) - sorted_probs  # mass strictly above each sorted token
        kept = before < p
        threshold = jnp.min(jnp.where(kept, sorted_probs, jnp.inf))
        masked = jnp.where(probs >= threshold, scaled, -jnp.inf)
        sampled = jax.random.categorical(key, masked)
        return jnp.where(temp > 0, sampled, jnp.argmax(logit)).astype(jnp.int32)

    return jax.vmap(one)(logits, keys, temperature, top_p)


_DEFAULT_PARAMS = FeatureParams()


def dmel_encode(logmel: jax.Array, params: FeatureParams = _DEFAULT_PARAMS) -> jax.Array:
    """`features.mel.dmel_encode` in jnp: the same rule (`dmel_codes`: nearest centre, ties to the lower bin)."""
    return dmel_codes(logmel, jnp.asarray(params.bin_centres), jnp)
