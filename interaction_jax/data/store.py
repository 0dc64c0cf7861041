"""Episode store: ArrayRecord shards of serialised episodes plus a JSON manifest.

    out_dir/
      shard-00000.array_record   records written with group_size:1 (cheap random access)
      ...
      manifest.json              written LAST; its presence is what makes a store complete

Crash safety: `write_store` builds everything in a sibling `out_dir.tmp-<pid>`, fsyncs the
files and the directory, and only then renames it to `out_dir`. A directory without
`manifest.json` is never treated as a store, so an interrupted write can never be mistaken
for a finished one, and an existing store is only replaced with `overwrite=True` (old one
renamed away, new one renamed in, old one deleted). Even with `overwrite=True` only an empty
folder or a complete store of this project (its manifest and listed shards, nothing else) is
replaced: anything else at `out_dir` is an error naming what is there, so a wrong `--out` never
deletes unrelated files. Temporary folders left by writers that died (`out_dir.tmp-<pid>` whose
pid is no longer running) are removed by the next write; a live writer's folder is never touched.

`EpisodeStore` is a Grain `RandomAccessDataSource` (len + getitem). It pickles without
its open readers (they are reopened lazily in each worker process).

Damage: a record whose bytes fail the shard's checksums or do not decode raises
`CorruptRecordError` naming the shard file and the record's index (in the store and in the
shard). `open_store(..., allow_damaged=True)` (what training uses) also opens a store with an
unreadable shard (truncated, header bits flipped): its records then raise `CorruptRecordError`
when read, so the training pipeline can skip them (`interaction_jax.data.corrupt`).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import threading
import time
from collections.abc import Iterable, Sized
from typing import Any

import numpy as np

from interaction_jax.data.episode import Episode
from interaction_jax.data.serialize import (
    VERSION as EPISODE_VERSION,
)
from interaction_jax.data.serialize import (
    episode_and_extras_from_bytes,
    episode_to_bytes,
    record_header,
)
from interaction_jax.errors import UserError


class StoreError(UserError, ValueError):
    """An episode store that is damaged or not a store (the message names the folder and the problem)."""


class StoreExistsError(UserError, FileExistsError):
    """Something is already at the output path and may not be replaced."""


class StoreNotFoundError(UserError, FileNotFoundError):
    """No episode store at the given path."""


class CorruptRecordError(StoreError):
    """One record of a store cannot be read or decoded; names the shard and the record index."""

    def __init__(self, message: str, *, index: int = -1, shard: str = ""):
        super().__init__(message)
        self.index, self.shard = index, shard


MANIFEST = "manifest.json"
STORE_FORMAT = "interaction_jax.episode_store"
STORE_VERSION = 1
_WRITER_OPTIONS = "group_size:1"  # one record per chunk: random reads decode only that record
_READER_OPTIONS = "readahead_buffer_size:0"  # random access: no read-ahead


def is_complete_store(path: str) -> bool:
    """True iff `path` is a directory holding a manifest (the last file a writer creates)."""
    return os.path.isfile(os.path.join(path, MANIFEST))


def _fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _as_record(item: Episode | bytes) -> bytes:
    if isinstance(item, Episode):
        return episode_to_bytes(item)
    if isinstance(item, (bytes, bytearray, memoryview)):
        return bytes(item)
    raise TypeError(f"write_store takes Episodes or serialised bytes, got {type(item).__name__}")


class _Progress:
    """One stderr line every `every` episodes with the running rate."""

    def __init__(self, every: int):
        self.every, self.t0 = every, time.time()

    def update(self, n: int, final: bool = False) -> None:
        if self.every <= 0 or (not final and n % self.every):
            return
        dt = max(time.time() - self.t0, 1e-9)
        print(f"write_store: {n} episodes, {n / dt:.1f} episodes/s{' (done)' if final else ''}",
              file=sys.stderr, flush=True)


def _write_shards(tmp: str, records: Iterable[bytes], per_shard: int, progress: _Progress):
    """Writes shards into `tmp`; returns (shard entries, sorted extras keys)."""
    from array_record.python.array_record_module import ArrayRecordWriter

    shards: list[dict[str, Any]] = []
    extras_keys: set[str] = set()
    writer, n = None, 0
    try:
        for rec in records:
            if writer is None:
                name = f"shard-{len(shards):05d}.array_record"
                writer = ArrayRecordWriter(os.path.join(tmp, name), _WRITER_OPTIONS)
                shards.append({"file": name, "num_records": 0})
            extras_keys.update(record_header(rec).get("extras", []))  # also rejects non-records early
            writer.write(rec)
            shards[-1]["num_records"] += 1
            n += 1
            progress.update(n)
            if shards[-1]["num_records"] == per_shard:
                writer.close()
                writer = None
    finally:
        if writer is not None:
            writer.close()
    for s in shards:
        _fsync_path(os.path.join(tmp, s["file"]))
    progress.update(n, final=True)
    return shards, sorted(extras_keys)


def write_store(
    out_dir: str,
    episodes: Iterable[Episode | bytes],
    *,
    num_shards: int | None = None,
    records_per_shard: int = 256,
    metadata: dict[str, Any] | None = None,
    overwrite: bool = False,
    progress: bool | int = True,
) -> str:
    """Writes `episodes` (Episodes or `episode_to_bytes` records) as a store at `out_dir`.

    `num_shards` (needs a sized `episodes`) overrides `records_per_shard`. `metadata`
    (JSON: task, seed, config summary, ...) is kept in the manifest. `progress`: True prints
    every 100 episodes, an int every that many, False never. Returns `out_dir`.
    """
    out_dir = os.path.normpath(os.path.abspath(out_dir))
    if num_shards is not None:
        if num_shards <= 0:
            raise StoreError(f"num_shards must be > 0, got {num_shards}")
        if not isinstance(episodes, Sized):
            raise ValueError("num_shards needs a sized episode collection; pass records_per_shard instead")
        records_per_shard = max(1, math.ceil(len(episodes) / num_shards))
    if records_per_shard <= 0:
        raise StoreError(f"records_per_shard must be > 0, got {records_per_shard}")
    if os.path.lexists(out_dir):
        if not overwrite:
            if is_complete_store(out_dir):
                raise StoreExistsError(f"{out_dir} already holds an episode store; "
                                      "pass overwrite=True to replace it")
            if not os.path.isdir(out_dir) or os.listdir(out_dir):
                raise StoreExistsError(f"{out_dir} exists and is not an episode store (no {MANIFEST}); "
                                      "remove it or pass overwrite=True")
        else:
            _check_replaceable(out_dir)
    manifest_meta = json.loads(json.dumps(metadata or {}, default=str))  # fail early, not after hours
    every = 100 if progress is True else int(progress or 0)

    remove_stale_temporaries(out_dir)
    tmp = f"{out_dir}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)  # our own leftover from an earlier crash with this pid
    os.makedirs(tmp)
    try:
        records = map(_as_record, episodes)
        shards, extras_keys = _write_shards(tmp, records, records_per_shard, _Progress(every))
        manifest = {
            "format": STORE_FORMAT,
            "version": STORE_VERSION,
            "episode_format_version": EPISODE_VERSION,
            "num_episodes": sum(s["num_records"] for s in shards),
            "shards": shards,
            "extras": extras_keys,
            "metadata": manifest_meta,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "created_unix": time.time(),
        }
        mpath = os.path.join(tmp, MANIFEST)
        with open(mpath + ".part", "w") as f:
            json.dump(manifest, f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        os.rename(mpath + ".part", mpath)
        _fsync_path(tmp)
        _install(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _store_entries(path: str) -> set[str] | None:
    """The files a complete store of this project consists of, or None if `path` is not one."""
    try:
        with open(os.path.join(path, MANIFEST)) as f:
            m = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(m, dict) or m.get("format") != STORE_FORMAT or not isinstance(m.get("shards"), list):
        return None
    return {MANIFEST} | {s["file"] for s in m["shards"] if isinstance(s, dict) and isinstance(s.get("file"), str)}


def _describe(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(sorted(names)[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _check_replaceable(out_dir: str) -> None:
    """Raises unless `out_dir` is an empty folder or a complete episode store with nothing else in it.

    `overwrite=True` means "replace my earlier store", never "delete whatever is at this path"."""
    if os.path.islink(out_dir) or not os.path.isdir(out_dir):
        kind = "a symlink" if os.path.islink(out_dir) else "a file"
        raise StoreExistsError(f"{out_dir} is {kind}, not an episode store; refusing to replace it "
                              "(expected an empty folder or a store written by write_store)")
    names = os.listdir(out_dir)
    if not names:
        return
    entries = _store_entries(out_dir)
    if entries is None:
        raise StoreExistsError(f"{out_dir} is not an episode store (no valid {MANIFEST}) and holds "
                              f"{len(names)} entries ({_describe(names)}); refusing to overwrite it "
                              "(expected an empty folder or a store written by write_store)")
    foreign = [n for n in names if n not in entries]
    if foreign:
        raise StoreExistsError(f"{out_dir} holds an episode store plus {len(foreign)} other entries "
                              f"({_describe(foreign)}); refusing to overwrite it (move them away first)")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError:
        return True  # unknown: assume alive, never delete a live writer's files
    return True


def remove_stale_temporaries(out_dir: str) -> list[str]:
    """Deletes `out_dir.tmp-<pid>` folders whose writer process is gone; returns what it removed.

    A writer killed mid-write (SIGKILL, power loss) cannot clean up after itself; the next write
    does. Folders of live processes (and of our own pid, handled by the caller) are kept."""
    parent, base = os.path.split(os.path.normpath(os.path.abspath(out_dir)))
    removed = []
    try:
        names = os.listdir(parent or ".")
    except OSError:
        return removed
    prefix = base + ".tmp-"
    for name in names:
        pid = name[len(prefix):]
        if not name.startswith(prefix) or not pid.isdigit() or int(pid) == os.getpid():
            continue
        path = os.path.join(parent, name)
        if os.path.isdir(path) and not os.path.islink(path) and not _pid_alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)
            print(f"write_store: removed {path} (left by writer {pid}, which is no longer running)",
                  file=sys.stderr, flush=True)
            removed.append(path)
    return removed


def _install(tmp: str, out_dir: str) -> None:
    """Renames the finished `tmp` to `out_dir`, moving any existing `out_dir` away first."""
    old = None
    if os.path.lexists(out_dir):
        _check_replaceable(out_dir)  # again: something may have appeared there while we wrote
        old = f"{out_dir}.old-{os.getpid()}"
        shutil.rmtree(old, ignore_errors=True)
        os.rename(out_dir, old)
    try:
        os.rename(tmp, out_dir)
    except BaseException:
        if old is not None:
            os.rename(old, out_dir)  # put the previous store back
        raise
    _fsync_path(os.path.dirname(out_dir) or ".")
    if old is not None:
        if os.path.isdir(old) and not os.path.islink(old):
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.remove(old)


class EpisodeStore:
    """Random access to the episodes of one store; see `open_store`.

    `store[i]` is an `Episode`, or `(Episode, extras)` when `with_extras` (default: when the
    store carries extras such as precomputed log-mels) — the form the Grain pipeline takes.
    """

    def __init__(self, path: str, manifest: dict[str, Any], with_extras: bool | None = None,
                 damaged: dict[int, str] | None = None):
        self.path = path
        self.manifest = manifest
        self.damaged = dict(damaged or {})  # shard number -> why it is unreadable
        self.with_extras = bool(manifest.get("extras")) if with_extras is None else with_extras
        counts = [s["num_records"] for s in manifest["shards"]]
        self._ends = np.cumsum(counts, dtype=np.int64)
        self._len = int(self._ends[-1]) if counts else 0
        self._readers: list[Any] = [None] * len(counts)
        self._lock = threading.Lock()

    @property
    def metadata(self) -> dict[str, Any]:
        return self.manifest.get("metadata", {})

    def __len__(self) -> int:
        return self._len

    def _reader(self, shard: int):
        r = self._readers[shard]
        if r is None:
            from array_record.python.array_record_module import ArrayRecordReader

            with self._lock:
                r = self._readers[shard]
                if r is None:
                    path = os.path.join(self.path, self.manifest["shards"][shard]["file"])
                    r = self._readers[shard] = ArrayRecordReader(path, _READER_OPTIONS)
        return r

    def raw(self, index: int) -> bytes:
        """The serialised record of episode `index`."""
        i = int(index)
        if i < 0:
            i += self._len
        if not 0 <= i < self._len:
            raise IndexError(f"episode index {index} out of range for a store of {self._len}")
        shard = int(np.searchsorted(self._ends, i, side="right"))
        pos = i - (int(self._ends[shard - 1]) if shard else 0)
        if shard in self.damaged:
            raise self._corrupt(i, shard, pos, f"its shard is unreadable: {self.damaged[shard]}")
        try:
            return self._reader(shard).read([pos])[0]
        except (RuntimeError, OSError, ValueError) as e:  # riegeli: checksum mismatch, truncated chunk
            raise self._corrupt(i, shard, pos, str(e)) from e

    def _corrupt(self, index: int, shard: int, pos: int, why: str) -> CorruptRecordError:
        name = self.manifest["shards"][shard]["file"]
        return CorruptRecordError(f"episode store {self.path}: record {index} (record {pos} of shard {name}) "
                                  f"is corrupt: {why}", index=index, shard=name)

    def episode(self, index: int) -> Episode:
        return self.episode_and_extras(index)[0]

    def episode_and_extras(self, index: int) -> tuple[Episode, dict[str, np.ndarray]]:
        data = self.raw(index)
        try:
            return episode_and_extras_from_bytes(data)
        except ValueError as e:
            i = int(index) % max(self._len, 1)
            shard = int(np.searchsorted(self._ends, i, side="right"))
            raise self._corrupt(i, shard, i - (int(self._ends[shard - 1]) if shard else 0), str(e)) from e

    def __getitem__(self, index: int) -> Episode | tuple[Episode, dict[str, np.ndarray]]:
        ep, extras = self.episode_and_extras(index)
        return (ep, extras) if self.with_extras else ep

    def close(self) -> None:
        with self._lock:
            for r in self._readers:
                if r is not None:
                    r.close()
            self._readers = [None] * len(self._readers)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_readers"] = [None] * len(self._readers)
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"EpisodeStore({self.path!r}, {self._len} episodes, {len(self._readers)} shards)"


def _validate(path: str, m: Any, allow_damaged: bool = False) -> dict[int, str]:
    """Raises on a bad manifest or shard; returns {shard: why} of unreadable shards if `allow_damaged`."""

    def bad(msg: str) -> StoreError:
        return StoreError(f"episode store {path}: {msg}")

    if not isinstance(m, dict) or m.get("format") != STORE_FORMAT:
        raise bad(f"{MANIFEST} is not an {STORE_FORMAT} manifest")
    if m.get("version") != STORE_VERSION:
        raise bad(f"unsupported store version {m.get('version')!r} (this code reads {STORE_VERSION})")
    for key in ("num_episodes", "shards"):
        if key not in m:
            raise bad(f"{MANIFEST} is missing {key!r}")
    if not isinstance(m["shards"], list):
        raise bad("manifest 'shards' must be a list")
    from array_record.python.array_record_module import ArrayRecordReader

    damaged: dict[int, str] = {}
    for k, s in enumerate(m["shards"]):
        if not isinstance(s, dict) or "file" not in s or "num_records" not in s:
            raise bad(f"manifest shard entry {k} needs 'file' and 'num_records', got {s!r}")
        f = os.path.join(path, s["file"])
        if not os.path.isfile(f):
            raise bad(f"missing shard file {s['file']} (listed in {MANIFEST})")
        try:
            r = ArrayRecordReader(f, _READER_OPTIONS)
            n = r.num_records()
            r.close()
        except Exception as e:  # noqa: BLE001 - any reader failure means a damaged shard
            if not allow_damaged:
                raise bad(f"shard {s['file']} is unreadable: {e}") from e
            damaged[k] = str(e)
            continue
        if n != s["num_records"]:
            why = f"shard {s['file']} holds {n} records but the manifest says {s['num_records']}"
            if not allow_damaged:
                raise bad(why)
            damaged[k] = why
    total = sum(s["num_records"] for s in m["shards"])
    if total != m["num_episodes"]:
        raise bad(f"shards hold {total} records but the manifest says num_episodes={m['num_episodes']}")
    if damaged and len(damaged) == len(m["shards"]):
        raise bad(f"every shard is unreadable (first: {m['shards'][min(damaged)]['file']}: {damaged[min(damaged)]})")
    return damaged


def open_store(path: str, *, with_extras: bool | None = None, allow_damaged: bool = False) -> EpisodeStore:
    """Opens and validates a store written by `write_store` (errors name what is wrong).

    `allow_damaged`: an unreadable shard is reported on stderr and its records raise
    `CorruptRecordError` when read, instead of the whole store failing to open."""
    path = os.path.normpath(os.path.abspath(path))
    if not os.path.isdir(path):
        raise StoreNotFoundError(f"episode store {path} does not exist (expected a folder written by prepare)")
    mpath = os.path.join(path, MANIFEST)
    if not os.path.isfile(mpath):
        raise StoreError(f"{path} is not a complete episode store: no {MANIFEST} (an interrupted write?)")
    try:
        with open(mpath) as f:
            manifest = json.load(f)
    except json.JSONDecodeError as e:
        raise StoreError(f"episode store {path}: {MANIFEST} is not valid JSON: {e}") from e
    damaged = _validate(path, manifest, allow_damaged)
    for k, why in damaged.items():
        s = manifest["shards"][k]
        first = sum(x["num_records"] for x in manifest["shards"][:k])
        print(f"[data] warning: episode store {path}: shard {s['file']} is unreadable ({why}); its records "
              f"{first}..{first + s['num_records'] - 1} will be skipped as corrupt", file=sys.stderr, flush=True)
    return EpisodeStore(path, manifest, with_extras, damaged)
