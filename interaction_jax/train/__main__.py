"""`python -m interaction_jax.train --config=configs/tiny.py --workdir=runs/tiny [--config.x.y=...]`.

Multi-host: pass --coordinator=HOST:PORT --num_processes=N --process_id=I (or set the
JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID environment variables); on TPU
pods and SLURM clusters `jax.distributed.initialize()` finds them itself (--distributed=auto).
"""

from __future__ import annotations

import os

from absl import app, flags

from interaction_jax import cli

FLAGS = flags.FLAGS


def _define_flags() -> None:
    """Command-line flags (defined only when run as a program, so importing never clashes)."""
    cli.DEFINE_config("config", "Config file, e.g. configs/tiny.py (overrides: --config.train.num_steps=...).")
    flags.DEFINE_string("workdir", None, "Run directory (checkpoints, TensorBoard).")
    flags.DEFINE_enum("distributed", "off", ["off", "auto", "manual"],
                      "'off', 'auto' (TPU pod / SLURM), or 'manual' (use the flags below).")
    flags.DEFINE_string("coordinator", os.environ.get("JAX_COORDINATOR_ADDRESS", ""), "host:port of process 0.")
    flags.DEFINE_integer("num_processes", _env_int("JAX_NUM_PROCESSES", 1), "Number of processes.", lower_bound=1)
    flags.DEFINE_integer("process_id", _env_int("JAX_PROCESS_ID", 0), "This process's index.", lower_bound=0)


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    try:
        return int(value) if value else default
    except ValueError:
        raise cli.UserError(f"environment variable {name}={value!r}: expected an integer") from None


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}: train takes only flags")
    if FLAGS.config is None or FLAGS.workdir is None:
        raise app.UsageError("--config=FILE and --workdir=DIR are required")
    if os.path.exists(FLAGS.workdir) and not os.path.isdir(FLAGS.workdir):
        raise cli.UserError(f"--workdir={FLAGS.workdir} is a file; expected a run directory (new or existing)")
    import jax

    if FLAGS.distributed == "auto":
        jax.distributed.initialize()
    elif FLAGS.distributed == "manual" or FLAGS.num_processes > 1:
        from interaction_jax.parallel import initialize_distributed

        initialize_distributed(FLAGS.coordinator, FLAGS.num_processes, FLAGS.process_id)
    from interaction_jax.train.checkpoint import CheckpointRestoreError, CheckpointSaveError
    from interaction_jax.train.trainer import NonFiniteLossError, Trainer

    try:
        result = Trainer(FLAGS.config, FLAGS.workdir).run()
    except (CheckpointSaveError, CheckpointRestoreError, NonFiniteLossError) as e:
        # the run stopped on purpose, with a message that says why and what is kept: no traceback
        raise SystemExit(f"[train] error: {e}") from None
    print(f"[train] done at step {result.step}; checkpoints in {FLAGS.workdir}/checkpoints, "
          f"TensorBoard: tensorboard --logdir {FLAGS.workdir}/tb")


if __name__ == "__main__":
    cli.run(main, name="train", define_flags=_define_flags)
