"""Checkpoints: Orbax CheckpointManager saving the train state and the Grain iterator together.

* Async saves; keep the newest `keep_last` plus every `keep_every`-th step.
* Orbax writes each step to a temporary directory and commits it atomically, so a crash or
  SIGTERM mid-save never replaces a good checkpoint with a partial one; `latest_step()` only
  sees committed steps.
* The train state is a plain pytree (params, optimizer state, step, rng); restoring onto a
  different mesh passes target shardings in the abstract state.
* A checkpoint from another config fails with the list of shapes that differ.
"""

from __future__ import annotations

import os
from typing import Any

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp


class CheckpointMismatchError(ValueError):
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


def save(manager: ocp.CheckpointManager, step: int, state: Any, data_iterator=None, *, force: bool = False) -> bool:
    """Saves `state` (and the data iterator's position) at `step`. Returns whether it saved."""
    items = {"state": ocp.args.StandardSave(state)}
    if data_iterator is not None:
        items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
    return manager.save(step, args=ocp.args.Composite(**items), force=force)


def _describe_mismatch(saved_meta, abstract_state) -> list[str]:
    diffs: list[str] = []
    flat_target = dict(jax.tree_util.tree_flatten_with_path(abstract_state)[0])
    try:
        flat_saved = dict(jax.tree_util.tree_flatten_with_path(saved_meta)[0])
    except Exception:  # noqa: BLE001 - metadata trees vary across orbax versions
        return diffs
    for path, want in flat_target.items():
        got = flat_saved.get(path)
        name = jax.tree_util.keystr(path)
        if got is None:
            diffs.append(f"{name}: missing in checkpoint")
        elif tuple(getattr(got, "shape", ())) != tuple(want.shape):
            diffs.append(f"{name}: checkpoint {tuple(got.shape)} vs model {tuple(want.shape)}")
    for path in flat_saved:
        if path not in flat_target:
            diffs.append(f"{jax.tree_util.keystr(path)}: in checkpoint but not in the model")
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
    try:
        meta = manager.item_metadata(step)
        saved = meta["state"] if meta is not None and "state" in meta else None
    except Exception:  # noqa: BLE001
        saved = None
    if saved is not None:
        diffs = _describe_mismatch(saved, abstract_state)
        if diffs:
            raise CheckpointMismatchError(
                f"checkpoint {manager.directory}/{step} was written by a different config; "
                f"{len(diffs)} arrays differ:\n  " + "\n  ".join(diffs[:20])
            )
    items = {"state": ocp.args.StandardRestore(abstract_state)}
    if data_iterator is not None:
        items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
    restored = manager.restore(step, args=ocp.args.Composite(**items))
    return restored["state"], int(step)


def abstract_like(state: Any, shardings: Any | None = None) -> Any:
    """ShapeDtypeStructs of `state` (optionally with target shardings) for `restore`."""
    if shardings is None:
        return jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=getattr(x, "sharding", None)), state
        )
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=s), state, shardings)
