"""Parameters for inference: the newest checkpoint of a training run, restored for a config."""

from __future__ import annotations

import os

from interaction_jax.errors import UserError


class ParamsError(UserError, RuntimeError):
    """No usable checkpoint (missing directory, nothing committed)."""


def load_params(config, workdir: str, *, log_prefix: str = "[params]", step: int | None = None):
    """(params, rest) from the newest (or the given `step`'s) checkpoint in `workdir/checkpoints`.

    A checkpoint of another config fails with `CheckpointMismatchError` naming the arrays.
    """
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
    _, abstract = abstract_state_on(config, make_mesh(config.mesh))
    state, step = ckpt.restore(manager, abstract, step=step)
    print(f"{log_prefix} parameters from {directory}/{step}")
    return state["params"], state["rest"]
