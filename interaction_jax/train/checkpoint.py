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
        if diffs:
            raise CheckpointMismatchError(
                f"checkpoint {manager.directory}/{step} was written by a different config; "
                f"{len(diffs)} arrays differ:\n  " + "\n  ".join(diffs[:20])
            )
    items = {"state": ocp.args.StandardRestore(abstract_state)}
    if data_iterator is not None and data_state_matches(str(manager.directory), step):
        items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
    elif data_iterator is not None:
        import logging

        logging.warning(
            "checkpoint %s/%s holds no data-iterator state for process %d of %d (saved with another process "
            "count?); the data stream starts fresh", manager.directory, step, jax.process_index(), jax.process_count(),
        )
    restored = manager.restore(step, args=ocp.args.Composite(**items))
    return restored["state"], int(step)


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
