"""Background model: asynchronous delegation with the full conversation context.

`protocol` (ContextPackage, DelegationEvent), `runner` (BackgroundRunner: jobs in threads,
never blocking the micro-turn clock), `slots` (BackgroundQueue: events -> background-slot
tokens, identical to training packing), `session` (DelegationHub: per-session routing and
delegation records, the engine's entry point), backends (`tool`, `http`, `lm`) chosen by
`config.background` through `make_backend` / `make_runner`.
"""

from interaction_jax.background.backends import BACKENDS, make_backend, make_hub, make_runner
from interaction_jax.background.http_backend import HTTPBackendError, OpenAIChatBackend
from interaction_jax.background.lm_backend import LMBackend, render_prompt
from interaction_jax.background.protocol import (
    CONTEXT_PACKAGE_VERSION,
    ContextPackage,
    Delegation,
    DelegationEvent,
    build_context_package,
    chat_messages,
    render_transcript,
)
from interaction_jax.background.runner import Backend, BackgroundRunner
from interaction_jax.background.session import DelegationHub
from interaction_jax.background.slots import BackgroundQueue
from interaction_jax.background.tool_backend import ToolBackend

__all__ = [
    "BACKENDS",
    "CONTEXT_PACKAGE_VERSION",
    "Backend",
    "BackgroundQueue",
    "BackgroundRunner",
    "ContextPackage",
    "Delegation",
    "DelegationEvent",
    "DelegationHub",
    "HTTPBackendError",
    "LMBackend",
    "OpenAIChatBackend",
    "ToolBackend",
    "build_context_package",
    "chat_messages",
    "make_backend",
    "make_hub",
    "make_runner",
    "render_prompt",
    "render_transcript",
]
