"""A local text LM built from this codebase's transformer, usable as the `lm` background backend.

`TextLM` = the interaction model's text embedding (tied unembedding) + the same scanned
`Transformer` backbone, configured by a `model` config section, so it shares layers, MoE,
attention kernels and the explicit `KVCache` with the interaction model. `JaxLMGenerator`
turns it into the `generate(prompt) -> Iterator[str]` callable `LMBackend` takes: the prompt is
prefilled in fixed-size chunks and decoded one token at a time against the cache, with exactly
two jitted functions (chunk, step) compiled once each whatever the prompt length.

Weights: pass an `nnx.State` (e.g. restored from a checkpoint of this module); training a
text LM for the background role is not part of this package (see the package notes).
"""

from __future__ import annotations

from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from interaction_jax.model.embeddings import TextEmbedding
from interaction_jax.model.transformer import KVCache, Transformer
from interaction_jax.streams.tokenizer import NUM_CONTROL, Control


class TextLM(nnx.Module):
    """Decoder-only text LM over the interaction tokenizer's ids, from a `model` config section."""

    def __init__(self, model_cfg, vocab_size: int, *, rngs: nnx.Rngs):
        dtype, param_dtype = jnp.dtype(model_cfg.dtype), jnp.dtype(model_cfg.param_dtype)
        self.num_kv_heads = int(model_cfg.num_kv_heads)
        self.head_dim = int(model_cfg.head_dim)
        self.vocab_size = int(vocab_size)
        self.embed = TextEmbedding(vocab_size, int(model_cfg.d_model), dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.backbone = Transformer(model_cfg, rngs=rngs)

    def __call__(self, tokens: jax.Array) -> jax.Array:
        """tokens [B, L] -> logits [B, L, V] (full causal forward; training / reference)."""
        positions = jnp.broadcast_to(jnp.arange(tokens.shape[1], dtype=jnp.int32), tokens.shape)
        h, _ = self.backbone(self.embed.embed(tokens), positions)
        return self.embed.attend(h)

    def init_cache(self, batch_size: int, max_len: int) -> KVCache:
        return self.backbone.init_cache(batch_size, max_len, self.num_kv_heads, self.head_dim)

    def step(self, tokens: jax.Array, cache: KVCache) -> tuple[jax.Array, KVCache]:
        """tokens [B, S] appended at each slot's cache length -> (logits [B, S, V], advanced cache)."""
        positions = cache.lengths[:, None] + jnp.arange(tokens.shape[1], dtype=jnp.int32)[None, :]
        h, _, cache = self.backbone.step(self.embed.embed(tokens), positions, cache)
        return self.embed.attend(h), cache


class JaxLMGenerator:
    """`generate(prompt) -> Iterator[str]` over a `TextLM`, greedy or with temperature.

    The prompt keeps its last `max_len - max_new_tokens` tokens (the recent conversation and the
    request are at the end). Decoding stops at `stop_token` (TEXT_END by default) or after
    `max_new_tokens`; control tokens are never emitted as text.
    """

    def __init__(
        self,
        model: TextLM,
        tokenizer,
        *,
        max_len: int = 1024,
        max_new_tokens: int = 64,
        prefill_chunk: int = 64,
        temperature: float = 0.0,
        seed: int = 0,
        stop_token: int = int(Control.TEXT_END),
    ):
        if max_new_tokens >= max_len:
            raise ValueError(f"JaxLMGenerator: max_new_tokens={max_new_tokens} must be < max_len={max_len}")
        self.tokenizer = tokenizer
        self.max_len, self.max_new_tokens = int(max_len), int(max_new_tokens)
        self.chunk = int(prefill_chunk)
        self.temperature = float(temperature)
        self.stop_token = int(stop_token)
        self._rng = jax.random.key(seed)
        self._cache0 = model.init_cache(1, self.max_len + self.chunk)  # room for a padded last chunk
        graphdef, state = nnx.split(model)
        self._state = state

        @jax.jit
        def run(state, tokens, cache):
            return nnx.merge(graphdef, state).step(tokens, cache)

        self._run = run
        self.__name__ = "JaxLMGenerator"

    def _pick(self, logits: jax.Array) -> int:
        logits = np.asarray(logits, np.float32).copy()
        logits[: int(Control.TEXT_END)] = -np.inf  # PAD..DELEGATE_END except TEXT_END are not text
        logits[int(Control.TEXT_END) + 1 : NUM_CONTROL] = -np.inf
        if self.temperature <= 0:
            return int(np.argmax(logits))
        self._rng, key = jax.random.split(self._rng)
        return int(jax.random.categorical(key, jnp.asarray(logits) / self.temperature))

    def generate_ids(self, prompt: str) -> Iterator[int]:
        """Token ids of the continuation (stop token excluded)."""
        ids = self.tokenizer.encode(prompt)[-(self.max_len - self.max_new_tokens) :] or [int(Control.NOTHING)]
        cache = self._cache0
        logits = None
        for i in range(0, len(ids), self.chunk):
            part = ids[i : i + self.chunk]
            padded = np.full((1, self.chunk), int(Control.PAD), np.int32)
            padded[0, : len(part)] = part
            out, cache = self._run(self._state, jnp.asarray(padded), cache)
            # Rows past the real tokens hold padding; rewinding `lengths` lets later tokens overwrite
            # them, and the causal mask on row indices keeps anyone from attending them meanwhile.
            cache = cache._replace(lengths=jnp.full_like(cache.lengths, i + len(part)))
            logits = out[0, len(part) - 1]
        for _ in range(self.max_new_tokens):
            tok = self._pick(logits)
            if tok == self.stop_token:
                return
            yield tok
            out, cache = self._run(self._state, jnp.asarray([[tok]], jnp.int32), cache)
            logits = out[0, 0]

    def __call__(self, prompt: str) -> Iterator[str]:
        pending = bytearray()
        for tok in self.generate_ids(prompt):
            text = self._text(tok, pending)
            if text:
                yield text

    def _text(self, tok: int, pending: bytearray) -> str:
        """Decodes one token; with the byte tokenizer, holds bytes until they form whole UTF-8 characters."""
        if not hasattr(self.tokenizer, "vocab_size") or self.tokenizer.vocab_size != NUM_CONTROL + 256:
            return self.tokenizer.decode([tok])
        pending.append(tok - NUM_CONTROL)
        try:
            text = pending.decode("utf-8")
        except UnicodeDecodeError:
            if len(pending) < 4:
                return ""
            text = pending.decode("utf-8", errors="replace")
        pending.clear()
        return text


def make_jax_lm_generate(config, *, state: nnx.State | None = None, seed: int = 0, **kwargs) -> JaxLMGenerator:
    """Builds `TextLM` from `config.model` with the configured tokenizer (random init unless `state`)."""
    from interaction_jax.streams.tokenizer import make_tokenizer

    tokenizer = make_tokenizer(config.text)
    model = TextLM(config.model, tokenizer.vocab_size, rngs=nnx.Rngs(seed))
    if state is not None:
        nnx.update(model, state)
    return JaxLMGenerator(model, tokenizer, seed=seed, **kwargs)
