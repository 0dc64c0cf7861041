"""Delegation events -> the token stream of the layout's background input slots.

Training packs a background result as `BG_START, text tokens, BG_END` (an error as `BG_ERROR,
message, BG_END`), available from the micro-turn in which it arrives, `background_slots` tokens
per micro-turn, overflow carried to later micro-turns, unused slots `NOTHING`
(`streams.text_streams.background_tokens` + `fill_slots`). `BackgroundQueue` produces the same
sequence live, so the model sees at inference exactly what it was trained on: push the events
polled during micro-turn t, then `take(layout.background_slots)` for t's input block.

Results stream in chunks while training data has whole results, so one job owns the stream
from its `BG_START` to its `BG_END`: another job's tokens wait until then (tokens of two results
never interleave, which the model has never seen). With `stream=False` a job's tokens are
released only when it is done, which matches the training data exactly for any tokenizer; with
the byte tokenizer the streamed sequence is identical as well, because encoding chunks one by
one gives the same bytes as encoding their concatenation.
"""

from __future__ import annotations

import collections

from interaction_jax.background.protocol import CANCELLED, CHUNK, DONE, ERROR, DelegationEvent
from interaction_jax.streams.tokenizer import Control


class BackgroundQueue:
    """Per-session FIFO of background-slot tokens fed by `DelegationEvent`s.

    Args:
      tokenizer: the interaction model's text tokenizer (`encode(str) -> list[int]`).
      stream: release result tokens as chunks arrive (True) or only when the job is done.
    """

    def __init__(self, tokenizer, *, stream: bool = True):
        self.tokenizer = tokenizer
        self.stream = stream
        self._ready: collections.deque[int] = collections.deque()  # tokens that may go out now
        self._jobs: dict[int, list[int]] = {}  # job id -> tokens waiting (not yet owner)
        self._finished: set[int] = set()  # jobs whose closing tokens are in their buffer
        self._order: list[int] = []  # jobs waiting, in order of their first token
        self._owner: int | None = None  # job currently streaming into _ready
        self._streamed: dict[int, str] = {}  # job id -> text already tokenised from chunks

    def __len__(self) -> int:
        """Tokens not yet taken (ready or waiting behind the current owner)."""
        return len(self._ready) + sum(len(v) for v in self._jobs.values())

    @property
    def busy(self) -> bool:
        """A job's result has started (BG_START sent or queued) but not ended."""
        return self._owner is not None

    def push(self, events: list[DelegationEvent] | DelegationEvent) -> None:
        """Adds events in the order the runner produced them."""
        if isinstance(events, DelegationEvent):
            events = [events]
        for ev in events:
            self._push_one(ev)
        self._release()

    def _push_one(self, ev: DelegationEvent) -> None:
        j = ev.job_id
        if j in self._finished:
            return
        started = j in self._jobs
        if ev.kind == CHUNK:
            if not started:
                self._open(j, [int(Control.BG_START)])
            if self.stream:
                self._jobs[j] += self.tokenizer.encode(ev.text)
                self._streamed[j] = self._streamed.get(j, "") + ev.text
        elif ev.kind == DONE:
            if not started:
                self._open(j, [int(Control.BG_START)])
            # `done` carries the full result: add whatever no chunk delivered (all of it if unstreamed).
            sent = self._streamed.pop(j, "")
            rest = ev.text[len(sent) :] if ev.text.startswith(sent) else ""
            self._jobs[j] += self.tokenizer.encode(rest)
            self._close(j, [int(Control.BG_END)])
        elif ev.kind == ERROR:
            err = [int(Control.BG_ERROR)] + self.tokenizer.encode(ev.text) + [int(Control.BG_END)]
            if started and self.stream:
                # Part of a result already went (or may go) out: end it, then report the error.
                self._close(j, [int(Control.BG_END)] + err)
            else:
                # Nothing of the result reached the model: drop the partial result, report the error.
                if not started:
                    self._open(j, [])
                self._jobs[j] = err
                self._close(j, [])
        elif ev.kind == CANCELLED:
            if started and self.stream:
                self._close(j, [int(Control.BG_END)])
            elif started:
                self._drop(j)

    def _open(self, job_id: int, tokens: list[int]) -> None:
        self._jobs[job_id] = list(tokens)
        self._order.append(job_id)

    def _close(self, job_id: int, tokens: list[int]) -> None:
        self._streamed.pop(job_id, None)
        self._jobs[job_id] += tokens
        self._finished.add(job_id)

    def _drop(self, job_id: int) -> None:
        self._streamed.pop(job_id, None)
        self._jobs.pop(job_id, None)
        self._order.remove(job_id)
        self._finished.add(job_id)

    def _release(self) -> None:
        """Moves tokens of the owning job (then the next ones, in order) to the ready queue."""
        while self._order:
            j = self._order[0]
            done = j in self._finished
            if not done and not self.stream:
                return  # whole-result mode: wait for the first job to finish
            self._owner = j
            self._ready.extend(self._jobs[j])
            self._jobs[j] = []
            if not done:
                return  # still streaming: it keeps the stream until its BG_END
            self._order.pop(0)
            del self._jobs[j]
            self._owner = None

    def take(self, n_slots: int) -> list[int]:
        """Tokens for one micro-turn's background slots: up to `n_slots`, NOTHING-padded."""
        out = [self._ready.popleft() for _ in range(min(n_slots, len(self._ready)))]
        return out + [int(Control.NOTHING)] * (n_slots - len(out))
