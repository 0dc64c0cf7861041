"""The user-error base class every command's error boundary catches (`interaction_jax.cli`).

An exception derived from `UserError` means "the input was wrong": a command prints its message
as one line and exits with status 2. Anything else is a bug and keeps its traceback. Each module
keeps its own error class (ConfigError, AudioError, StreamError ...) and adds `UserError` to its
bases, so callers that catch the old class (or ValueError) are unaffected.
"""

from __future__ import annotations


class UserError(Exception):
    """A bad input (file, flag, config value, data): reported as one line, exit status 2."""


def one_line(error: BaseException | str) -> str:
    """The error's message on a single line (inner newlines folded, whitespace squeezed)."""
    text = str(error) if not isinstance(error, str) else error
    parts = [p.strip() for p in text.splitlines() if p.strip()]
    return "; ".join(parts) or type(error).__name__
