"""Skipping corrupt records: one bad record never ends a training run, and none goes unreported.

`SkipCorrupt` wraps a random-access source. When a read raises `CorruptRecordError` (the
message names the store, the shard and the record index) it follows `data.on_corrupt_record`:

* "skip" (default): print one warning line naming the record and the running count, and
  return the next readable record instead (deterministic, so a resumed run sees the same
  batches). A record is counted and reported once, however many epochs read it. More than
  `data.max_corrupt_records` distinct bad records stop the run (the store is badly damaged).
* "stop": the first corrupt record stops the run with that error (a `UserError`: one line,
  exit status 2 from the CLI).

The count lives in the process that consumes the batches. `make_iterator` reads with
`report=False` (in Grain worker processes when `data.worker_count > 0`, each with its own copy
of this object): the skips travel with the batch they were made for (`Skips`) and the main
process's `report()` warns, counts and applies the policy and the limit, so the count and the
limit cover every worker, and a record two workers both skipped is counted once.
"""

from __future__ import annotations

import sys
import threading
from typing import Any

from interaction_jax.data.store import CorruptRecordError


class Skips:
    """The corrupt records skipped to make one element: (source index, message, store index, shard) each.

    A plain object (not a sequence), so a batch holds one per element as a NumPy object array."""

    __slots__ = ("records",)

    def __init__(self, records: tuple[tuple[int, str, int, str], ...] = ()):
        self.records = records

    def __getstate__(self) -> tuple:
        return self.records

    def __setstate__(self, records: tuple) -> None:
        self.records = records


class SkipCorrupt:
    """`source[i]`, or the next readable record when record i is corrupt (see the module docstring)."""

    def __init__(self, source: Any, policy: str = "skip", limit: int = 100, *, warn=None):
        if policy not in ("skip", "stop"):
            raise ValueError(f"on_corrupt_record must be 'skip' or 'stop', got {policy!r}")
        self.source, self.policy, self.limit = source, policy, int(limit)
        self.bad: set[int] = set()
        self._warn = warn
        self._lock = threading.Lock()

    @classmethod
    def from_config(cls, config, source: Any) -> SkipCorrupt:
        if isinstance(source, SkipCorrupt):
            return source
        d = config.data
        return cls(source, str(d.get("on_corrupt_record", "skip")), int(d.get("max_corrupt_records", 100)))

    @property
    def count(self) -> int:
        """Distinct corrupt records met so far (in this process)."""
        return len(self.bad)

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int):
        return self.read(index)[0]

    def read(self, index: int, *, report: bool = True) -> tuple[Any, Skips]:
        """The record standing in for `index` and the corrupt records skipped to find it.

        With `report=False` nothing is warned or counted here (the caller passes the skips to
        `report()` in the process that owns the count); under policy "stop" the first corrupt
        record still raises here, naming it."""
        n = len(self.source)
        skipped = []
        for k in range(n):
            i = (int(index) + k) % n
            try:
                return self.source[i], Skips(tuple(skipped))
            except CorruptRecordError as e:
                if report or self.policy == "stop":  # "stop" names the record at once, in any process
                    self._met(i, e)
                skipped.append((i, str(e), int(e.index), str(e.shard)))
        raise CorruptRecordError(f"every one of the {n} records of the data source is corrupt")

    def report(self, skips: Skips) -> None:
        """Warns about, counts and applies the policy to skips read elsewhere (`read(report=False)`)."""
        for i, message, index, shard in skips.records:
            self._met(i, CorruptRecordError(message, index=index, shard=shard))

    def _met(self, i: int, error: CorruptRecordError) -> None:
        if self.policy == "stop":
            raise CorruptRecordError(f"{error} (data.on_corrupt_record='stop'; use 'skip' to skip such records)",
                                     index=error.index, shard=error.shard) from error
        with self._lock:
            if i in self.bad:
                return
            self.bad.add(i)
            count = len(self.bad)
        if count > self.limit:
            raise CorruptRecordError(f"{count} corrupt records, more than data.max_corrupt_records={self.limit}; "
                                     f"the last: {error}", index=error.index, shard=error.shard) from error
        line = f"[data] warning: skipped {error} ({count} corrupt records skipped so far)"
        if self._warn is not None:
            self._warn(line)
        else:
            print(line, file=sys.stderr, flush=True)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()
