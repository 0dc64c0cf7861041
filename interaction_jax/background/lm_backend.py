"""Local text-LM backend: any `generate(prompt) -> Iterator[str]` callable.

`LMBackend` renders the package into a prompt and streams whatever the callable yields, so any
local model plugs in. `jax_lm.make_jax_lm_generate` builds such a callable from this codebase's
transformer (`TextLM`, decoded with the explicit KV cache); it lives in its own module so that
importing the background package does not import JAX.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

from interaction_jax.background.protocol import SYSTEM_PROMPT, ContextPackage, render_transcript

GenerateFn = Callable[[str], Iterator[str]]


def render_prompt(package: ContextPackage, system_prompt: str = SYSTEM_PROMPT) -> str:
    """Plain-text prompt for a completion-style LM: instructions, transcript, request, answer cue."""
    transcript = render_transcript(package) or "(nothing yet)"
    return f"{system_prompt}\n\nConversation so far:\n{transcript}\n\nRequest: {package.request}\nAnswer:"


class LMBackend:
    """Streams `generate(prompt_fn(package))`; stops pulling chunks as soon as the job is cancelled."""

    name = "lm"

    def __init__(self, generate: GenerateFn, *, prompt_fn: Callable[[ContextPackage], str] = render_prompt):
        if not callable(generate):
            raise TypeError(f"LMBackend: generate must be callable, got {type(generate).__name__}")
        self.generate = generate
        self.prompt_fn = prompt_fn

    def __repr__(self) -> str:
        return f"LMBackend(generate={getattr(self.generate, '__name__', type(self.generate).__name__)})"

    def stream(self, package: ContextPackage, cancel: threading.Event) -> Iterator[str]:
        gen = self.generate(self.prompt_fn(package))
        try:
            for chunk in gen:
                if cancel.is_set():
                    return
                yield str(chunk)
        finally:
            close = getattr(gen, "close", None)
            if close is not None:
                close()
