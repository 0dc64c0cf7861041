"""The local JAX text-LM backend: cached decoding equals the full forward; compiled once; runs as a backend."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from interaction_jax.background import BackgroundRunner, LMBackend
from interaction_jax.background.jax_lm import JaxLMGenerator, TextLM, make_jax_lm_generate
from interaction_jax.streams.tokenizer import NUM_CONTROL, ByteTokenizer, Control

from .helpers import package, wait_for


@pytest.fixture(scope="module")
def lm(tiny_config):
    return TextLM(tiny_config.model, ByteTokenizer.vocab_size, rngs=nnx.Rngs(0))


def _reference_greedy(model, ids, n):
    """Greedy decoding with the full (uncached) forward, same token restrictions as the generator."""
    out = []
    for _ in range(n):
        full = np.array(model(jnp.asarray([ids + out], jnp.int32))[0, -1], np.float32)
        logits = np.full_like(full, -np.inf)
        logits[NUM_CONTROL:] = full[NUM_CONTROL:]
        logits[int(Control.TEXT_END)] = full[int(Control.TEXT_END)]
        tok = int(np.argmax(logits))
        if tok == int(Control.TEXT_END):
            break
        out.append(tok)
    return out


def test_cached_generation_matches_full_forward_and_compiles_once(lm):
    tok = ByteTokenizer()
    gen = JaxLMGenerator(lm, tok, max_len=128, max_new_tokens=6, prefill_chunk=16)
    for prompt in ("what is 2 plus 2", "a longer prompt that spans more than one prefill chunk: 347 times 29"):
        got = list(gen.generate_ids(prompt))
        assert got == _reference_greedy(lm, tok.encode(prompt), 6)
    assert gen._run._cache_size() == 2  # one chunk shape + one step shape, whatever the prompt length


def test_jax_lm_as_a_background_backend(tiny_config):
    generate = make_jax_lm_generate(tiny_config, max_len=256, max_new_tokens=4, prefill_chunk=64)
    runner = BackgroundRunner(LMBackend(generate), timeout_s=60)
    job = runner.submit(package())
    events = [e for e in wait_for(runner, 1, timeout=60) if e.job_id == job]
    assert events[-1].kind == "done"
    assert events[-1].text == "".join(e.text for e in events if e.kind == "chunk")
    with pytest.raises(ValueError, match="max_new_tokens"):
        JaxLMGenerator(TextLM(tiny_config.model, 272, rngs=nnx.Rngs(1)), ByteTokenizer(), max_len=8, max_new_tokens=8)
