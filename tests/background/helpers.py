"""Shared test helpers for the background package (not a test module)."""

from __future__ import annotations

import time

from interaction_jax.background import BackgroundRunner, build_context_package


def package(request: str = "what is 347 times 29", session: str = "s1", t: float = 1.0):
    return build_context_package(session, request, t, user_words=[(0.5, "hello")])


def wait_for(runner: BackgroundRunner, n_terminal: int, timeout: float = 10.0) -> list:
    """Polls (real time) until `n_terminal` jobs have finished; returns every event seen."""
    events: list = []
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        events += runner.poll()
        if sum(e.terminal for e in events) >= n_terminal:
            return events
        time.sleep(0.005)
    raise AssertionError(f"timed out waiting for {n_terminal} terminal events; got {events}")
