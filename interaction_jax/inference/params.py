"""Parameters for inference: the newest checkpoint of a training run, restored for a config."""

from __future__ import annotations

import os

from interaction_jax.errors import UserError


class ParamsError(UserError, RuntimeError):
    """No usable checkpoint (missing directory, nothing committed)."""


def load_params(config, workdir: str, *, log_prefix: str = "[params]", step: int | None = None):
    """(params, rest) from the newest (or the given `step`'s) checkpoint in `workdir/checkpoints`.

    With `inference.mesh` the arrays are read straight into their serving shardings (each
    device reads its own shards; whatever mesh the run was trained on), and only the parameters:
    the optimizer state is never read. Without one, onto the training mesh `config.mesh`.
    A checkpoint of another config fails with `CheckpointMismatchError` naming the arrays.
    """
    from interaction_jax.inference.sharding import serving_mesh
    from interaction_jax.parallel import make_mesh
    from interaction_jax.train import checkpoint as ckpt
    from interaction_jax.train.state import abstract_state_on

    directory = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(directory):
        raise ParamsError(f"--workdir={workdir}: no checkpoints/ directory (train first, or pass --init=random)")
    manager = ckpt.make_manager(directory, config.train)
    if manager.latest_step() is None:
        raise ParamsError(f"{directory}: no committed checkpoint")
    if step is not None and step not in manager.all_steps():
        raise ParamsError(f"{directory}: no checkpoint of step {step}; saved steps: {sorted(manager.all_steps())}")
    mesh = serving_mesh(config)
    if mesh is None:
        _, abstract = abstract_state_on(config, make_mesh(config.mesh))
        state, step = ckpt.restore(manager, abstract, step=step)
    else:
        _, abstract = abstract_state_on(config, mesh)
        step = manager.latest_step() if step is None else step
        state = restore_params_only(os.path.join(directory, str(step)), abstract)
    print(f"{log_prefix} parameters from {directory}/{step}")
    return state["params"], state["rest"]


def restore_params_only(step_dir: str, abstract_state: dict) -> dict:
    """{"params", "rest"} of a train-state checkpoint step into `abstract_state`'s shardings.

    A partial Orbax restore of the "state" item: the optimizer moments (twice the parameters)
    stay on disk. Shapes are checked against the checkpoint's metadata first.
    """
    import jax
    import orbax.checkpoint as ocp

    from interaction_jax.train import checkpoint as ckpt

    target = {k: abstract_state[k] for k in ("params", "rest")}
    saved = ckpt._saved_shapes(os.path.dirname(step_dir), int(os.path.basename(step_dir)))
    if saved is not None:
        saved = {k: v for k, v in saved.items() if k.split("/", 1)[0] in target}
        diffs = ckpt._describe_mismatch(saved, target)
        if diffs:
            raise ckpt.CheckpointMismatchError(
                f"checkpoint {step_dir} was written by a different config; {len(diffs)} arrays differ:\n  "
                + "\n  ".join(diffs[:20]))
    restore_args = jax.tree.map(lambda a: ocp.ArrayRestoreArgs(sharding=a.sharding, global_shape=a.shape,
                                                               dtype=a.dtype), target)
    args = ocp.args.PyTreeRestore(item=target, restore_args=restore_args, partial_restore=True)
    return ocp.PyTreeCheckpointer().restore(os.path.join(step_dir, "state"), args=args)
