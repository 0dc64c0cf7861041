"""Backend selection from `config.background` (see `config_lib.base_config`)."""

from __future__ import annotations

from interaction_jax.background.http_backend import OpenAIChatBackend
from interaction_jax.background.lm_backend import GenerateFn, LMBackend
from interaction_jax.background.runner import Backend, BackgroundRunner
from interaction_jax.background.session import DelegationHub
from interaction_jax.background.tool_backend import ToolBackend

BACKENDS = ("tool", "http", "lm")
CLOCKS = ("wall", "session")


def _section(config):
    """Accepts a full config (reads `.background`) or the background section itself."""
    return config.background if hasattr(config, "background") else config


def make_backend(config, *, generate: GenerateFn | None = None) -> Backend:
    """Builds the backend named by `background.backend`; "lm" needs a `generate` callable."""
    bc = _section(config)
    name = bc.backend
    if name == "tool":
        return ToolBackend(delay_s=float(bc.get("tool_delay_s", 0.0)))
    if name == "http":
        if not bc.url:
            raise ValueError("background.backend='http' needs background.url (e.g. http://127.0.0.1:8000/v1)")
        return OpenAIChatBackend(bc.url, bc.model, api_key_env=bc.api_key_env, timeout_s=float(bc.timeout_s))
    if name == "lm":
        if generate is None:
            raise ValueError(
                "background.backend='lm' needs a generate(prompt) -> Iterator[str] callable, e.g. "
                "interaction_jax.background.jax_lm.make_jax_lm_generate(lm_config, state=weights)"
            )
        return LMBackend(generate)
    raise ValueError(f"unknown background.backend {name!r}; expected one of {BACKENDS}")


def make_runner(config, *, generate: GenerateFn | None = None, clock=None) -> BackgroundRunner:
    """A `BackgroundRunner` with the configured backend, concurrency and per-job timeout."""
    bc = _section(config)
    kwargs = {} if clock is None else {"clock": clock}
    return BackgroundRunner(
        make_backend(bc, generate=generate),
        max_concurrent=int(bc.max_concurrent),
        timeout_s=float(bc.timeout_s) if bc.timeout_s else None,
        **kwargs,
    )


def make_hub(config, tokenizer, *, generate: GenerateFn | None = None, stream: bool = True) -> DelegationHub:
    """A `DelegationHub` over `make_runner(config)`; `background.clock="session"` = deterministic mode.

    Deterministic mode releases each result `background.sim_delay_s` of session time after its
    request (`DelegationHub(release_after_s=...)`), so evaluation does not depend on how fast
    the engine or the backend runs.
    """
    bc = _section(config)
    clock = bc.get("clock", "wall")
    if clock not in CLOCKS:
        raise ValueError(f"unknown background.clock {clock!r}; expected one of {CLOCKS}")
    release = float(bc.get("sim_delay_s", 2.0)) if clock == "session" else None
    return DelegationHub(make_runner(bc, generate=generate), tokenizer, stream=stream, release_after_s=release)
