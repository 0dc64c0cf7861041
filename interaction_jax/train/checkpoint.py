"""Checkpoints: Orbax CheckpointManager saving the train state and the Grain iterator together.

* Async saves; keep the newest `keep_last` plus every `keep_every`-th step.
* Orbax writes each step to a temporary directory and commits it atomically, so a crash or
  SIGTERM mid-save never replaces a good checkpoint with a partial one; `latest_step()` only
  sees committed steps.
* The train state is a plain pytree (params, optimizer state, step, rng); restoring onto a
  different mesh passes target shardings in the abstract state.
* A checkpoint from another config fails with the list of shapes that differ.
* A save that fails (disk full, permissions) raises `CheckpointSaveError` naming the step, for
  async saves as soon as the failure is seen; the half-written temporary directory is removed
  and the committed checkpoints are untouched, so the run stops with its last good checkpoint.
* `restore_newest_intact` falls back from a corrupt or incomplete newest checkpoint to the
  newest one that restores, moving the skipped ones aside (never deleting them).
"""

from __future__ import annotations

import glob
import logging
import os
import shutil
import weakref
from collections.abc import Callable
from typing import Any

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp

from interaction_jax.errors import UserError


class CheckpointMismatchError(UserError, ValueError):
    """The checkpoint's arrays do not match the model the config builds."""


def make_manager(directory: str, cfg) -> ocp.CheckpointManager:
    """Builds the manager from `config.train` (keep_last, keep_every, async_checkpointing)."""
    keep_every = int(getattr(cfg, "keep_every", 0) or 0)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=int(cfg.keep_last) if cfg.keep_last else None,
        keep_period=keep_every or None,
        enable_async_checkpointing=bool(cfg.async_checkpointing),
        create=True,
    )
    return ocp.CheckpointManager(os.path.abspath(directory), options=options)


class CheckpointSaveError(RuntimeError):
    """A checkpoint could not be written; training must stop rather than run on unsaved."""


class CheckpointRestoreError(RuntimeError):
    """No committed checkpoint of the run could be restored."""


_IN_FLIGHT: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # manager -> step of its last save


def _reason(e: BaseException) -> str:
    """One line for an exception (Orbax/TensorStore messages run to pages)."""
    text = str(e).strip()
    line = text.splitlines()[0] if text else ""
    line = line if len(line) <= 300 else line[:297] + "..."
    return f"{type(e).__name__}: {line}" if line else type(e).__name__


def _save_error(manager: ocp.CheckpointManager, step: int | None, e: BaseException) -> CheckpointSaveError:
    directory = str(manager.directory)
    if step is not None and jax.process_index() == 0:  # the uncommitted leftovers only take space
        for tmp in glob.glob(os.path.join(directory, f"{step}.orbax-checkpoint-tmp*")):
            shutil.rmtree(tmp, ignore_errors=True)
    try:
        manager.reload()
        latest = manager.latest_step()
    except Exception:  # noqa: BLE001 - the message matters more than the number here
        latest = "unknown"
    what = f"step {step}" if step is not None else "an earlier step"
    kept = f"the last good checkpoint, step {latest}, is kept" if latest is not None else "no checkpoint was committed"
    return CheckpointSaveError(
        f"saving checkpoint {what} to {directory} failed ({_reason(e)}); stopping the run: {kept}"
    )


def save(manager: ocp.CheckpointManager, step: int, state: Any, data_iterator=None, *, force: bool = False) -> bool:
    """Saves `state` (and the data iterator's position) at `step`. Returns whether it saved.

    Raises `CheckpointSaveError` if this save fails, or if the previous asynchronous one did
    (Orbax only reports that when the next save or wait starts).
    """
    wait_for_saves(manager)
    items = {"state": ocp.args.StandardSave(state)}
    if data_iterator is not None:
        items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
    try:
        saved = manager.save(step, args=ocp.args.Composite(**items), force=force)
    except Exception as e:  # noqa: BLE001 - any write failure (ENOSPC, EACCES, ...) stops the run
        raise _save_error(manager, step, e) from e
    if saved:
        _IN_FLIGHT[manager] = step
    return saved


def wait_for_saves(manager: ocp.CheckpointManager) -> None:
    """Blocks until the in-flight save (if any) is committed; raises `CheckpointSaveError` if it failed."""
    step = _IN_FLIGHT.pop(manager, None)
    try:
        manager.wait_until_finished()
    except Exception as e:  # noqa: BLE001
        raise _save_error(manager, step, e) from e


def check_saves(manager: ocp.CheckpointManager) -> None:
    """Non-blocking: raises `CheckpointSaveError` if an asynchronous save has finished and failed.

    Lets a run stop at the first step after a failed save instead of at the next save."""
    if manager in _IN_FLIGHT and not manager.is_saving_in_progress():
        wait_for_saves(manager)  # finished: returns at once, or raises its error


def _norm_path(path) -> str:
    parts = []
    for k in path:
        name = getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))
        parts.append(str(name))
    return "/".join(parts)


def _saved_shapes(directory: str, step: int) -> dict[str, tuple] | None:
    """{normalised path: shape} of the saved state, read from Orbax metadata (no array data)."""
    try:
        meta = ocp.PyTreeCheckpointer().metadata(os.path.join(directory, str(step), "state"))
    except Exception:  # noqa: BLE001 - metadata layout differs across orbax versions; skip the check
        return None
    tree = getattr(meta, "item_metadata", meta)
    tree = getattr(tree, "tree", tree)
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {_norm_path(p): tuple(getattr(v, "shape", ())) for p, v in flat}


def _describe_mismatch(saved: dict[str, tuple], abstract_state) -> list[str]:
    diffs: list[str] = []
    target = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(abstract_state)[0]:
        if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            continue  # keys are stored as raw key data; their shape differs by design
        target[_norm_path(path)] = tuple(leaf.shape)
    saved = {k: v for k, v in saved.items() if k in target or not k.startswith("rng")}
    for name, shape in target.items():
        if name not in saved:
            diffs.append(f"{name}: missing in checkpoint")
        elif saved[name] != shape:
            diffs.append(f"{name}: checkpoint {saved[name]} vs model {shape}")
    diffs += [f"{name}: in checkpoint but not in the model" for name in saved if name not in target]
    return diffs


def restore(
    manager: ocp.CheckpointManager, abstract_state: Any, data_iterator=None, step: int | None = None
) -> tuple[Any, int]:
    """Restores the latest (or given) step into the structure/shardings of `abstract_state`.

    `abstract_state` holds `jax.ShapeDtypeStruct`s (with `.sharding` for the target mesh).
    The data iterator, if given, is restored in place.
    """
    step = manager.latest_step() if step is None else step
    if step is None:
        raise FileNotFoundError(f"no committed checkpoint in {manager.directory}")
    saved = _saved_shapes(str(manager.directory), step)
    if saved is not None:
        diffs = _describe_mismatch(saved, abstract_state)
        n_arrays = sum(not jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) for x in jax.tree.leaves(abstract_state))
        if diffs and sum(d.endswith(": missing in checkpoint") for d in diffs) == n_arrays:
            # not one array of the model is listed: damaged metadata, not another config's checkpoint
            raise ValueError(f"checkpoint {manager.directory}/{step}: its metadata lists none of the model's "
                             f"{len(diffs)} arrays (damaged or incomplete)")
        if diffs:
            raise CheckpointMismatchError(
                f"checkpoint {manager.directory}/{step} was written by a different config; "
                f"{len(diffs)} arrays differ:\n  " + "\n  ".join(diffs[:20])
            )
    items = {"state": ocp.args.StandardRestore(abstract_state)}
    if data_iterator is not None and data_state_matches(str(manager.directory), step):
        items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
    elif data_iterator is not None:
        logging.warning(
            "checkpoint %s/%s holds no data-iterator state for process %d of %d (saved with another process "
            "count?); the data stream starts fresh", manager.directory, step, jax.process_index(), jax.process_count(),
        )
    restored = manager.restore(step, args=ocp.args.Composite(**items))
    return restored["state"], int(step)


def restore_newest_intact(
    manager: ocp.CheckpointManager, abstract_state: Any, data_iterator=None, *, log: Callable[[str], Any] = print
) -> tuple[Any, int] | None:
    """Restores the newest checkpoint that restores; None when there is none at all.

    A newest checkpoint that is corrupt or incomplete (a truncated array file, a missing item) must
    not block resuming: it is skipped with a message saying which and why, and moved aside to
    `<checkpoints>.skipped/<step>` once an older one restored (so it is neither lost nor tried
    again, and the run can save that step anew). A checkpoint of another config is not damage:
    `CheckpointMismatchError` is raised as from `restore`. If no checkpoint restores, nothing is
    moved and `CheckpointRestoreError` lists every step with its reason.
    """
    steps = sorted(manager.all_steps(), reverse=True)
    if not steps:
        return None
    skipped: list[tuple[int, str]] = []
    for step in steps:
        try:
            state, step = restore(manager, abstract_state, data_iterator, step=step)
        except CheckpointMismatchError:
            raise
        except Exception as e:  # noqa: BLE001 - any read failure means this step is damaged
            skipped.append((step, _reason(e)))
            log(f"[train] checkpoint step {step} in {manager.directory} cannot be restored ({_reason(e)}); "
                "trying an older one")
            continue
        for bad, why in skipped:
            moved = _set_aside(manager, bad)
            log(f"[train] skipped checkpoint step {bad} ({why}); resumed from step {step} instead; "
                f"the skipped one was moved to {moved}")
        if skipped:
            manager.reload()
        return state, step
    raise CheckpointRestoreError(
        f"no checkpoint in {manager.directory} can be restored: "
        + "; ".join(f"step {s}: {why}" for s, why in skipped)
        + " (nothing was moved; fix or remove them, or train in a new workdir)"
    )


def _set_aside(manager: ocp.CheckpointManager, step: int) -> str:
    """Moves step `step`'s directory to `<checkpoints>.skipped/` (a fresh name if taken); returns it."""
    directory = str(manager.directory)
    src = os.path.join(directory, str(step))
    dst_dir = directory.rstrip("/") + ".skipped"
    dst, n = os.path.join(dst_dir, str(step)), 1
    while os.path.lexists(dst):
        dst, n = os.path.join(dst_dir, f"{step}-{n}"), n + 1
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(f"set_aside_checkpoint_{step}")  # every process has tried it
    if jax.process_index() == 0:
        os.makedirs(dst_dir, exist_ok=True)
        os.rename(src, dst)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(f"set_aside_checkpoint_{step}_done")
    return dst


def data_state_matches(directory: str, step: int) -> bool:
    """Whether the step has a Grain iterator state for this process and process count."""
    name = f"process_{jax.process_index()}-of-{jax.process_count()}.json"
    return os.path.exists(os.path.join(directory, str(step), "data", name))


def abstract_like(state: Any, shardings: Any | None = None) -> Any:
    """ShapeDtypeStructs of `state` (optionally with target shardings) for `restore`."""
    if shardings is None:
        return jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=getattr(x, "sharding", None)), state
        )
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=s), state, shardings)
