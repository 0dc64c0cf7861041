"""Deterministic tool backend: the calculator / lookup table of the synthetic delegation task.

It answers with exactly `data.tasks.delegation.answer_request`, the function that wrote the
training data's results, so a model trained on the delegation task meets the same answers live.
The answer is streamed in small chunks (like a real model) and an optional delay makes it a
"slow backend" for tests of the runner's cadence and timeouts.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

from interaction_jax.background.protocol import ContextPackage
from interaction_jax.data.tasks.delegation import answer_request


class ToolBackend:
    """Answers `package.request` with the calculator / lookup table.

    Args:
      delay_s: wait before the first chunk (interrupted at once by cancellation).
      chunk_chars: characters per streamed chunk.
      chunk_delay_s: wait between chunks.
    Unservable requests raise ValueError (the runner turns it into an error event).
    """

    name = "tool"

    def __init__(self, *, delay_s: float = 0.0, chunk_chars: int = 4, chunk_delay_s: float = 0.0):
        if chunk_chars < 1:
            raise ValueError(f"ToolBackend: chunk_chars must be >= 1, got {chunk_chars}")
        self.delay_s = float(delay_s)
        self.chunk_chars = int(chunk_chars)
        self.chunk_delay_s = float(chunk_delay_s)

    def __repr__(self) -> str:
        return (
            f"ToolBackend(delay_s={self.delay_s}, chunk_chars={self.chunk_chars}, chunk_delay_s={self.chunk_delay_s})"
        )

    def stream(self, package: ContextPackage, cancel: threading.Event) -> Iterator[str]:
        if self.delay_s > 0 and cancel.wait(self.delay_s):
            return
        answer = answer_request(package.request)
        for i in range(0, len(answer), self.chunk_chars):
            if i and self.chunk_delay_s > 0 and cancel.wait(self.chunk_delay_s):
                return
            yield answer[i : i + self.chunk_chars]
