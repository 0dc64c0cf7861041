"""`python -m interaction_jax.train --config=configs/tiny.py --workdir=runs/tiny [--config.x.y=...]`.

Multi-host: pass --coordinator=HOST:PORT --num_processes=N --process_id=I (or set the
JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID environment variables); on TPU
pods and SLURM clusters `jax.distributed.initialize()` finds them itself (--distributed=auto).
"""

from __future__ import annotations

import os

from absl import app, flags
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=True)
flags.DEFINE_string("workdir", None, "Run directory (checkpoints, TensorBoard).")
flags.DEFINE_string("distributed", "off", "'off', 'auto' (TPU pod / SLURM), or 'manual' (use the flags below).")
flags.DEFINE_string("coordinator", os.environ.get("JAX_COORDINATOR_ADDRESS", ""), "host:port of process 0.")
flags.DEFINE_integer("num_processes", int(os.environ.get("JAX_NUM_PROCESSES", "1")), "Number of processes.")
flags.DEFINE_integer("process_id", int(os.environ.get("JAX_PROCESS_ID", "0")), "This process's index.")


def main(argv):
    del argv
    if FLAGS.config is None or FLAGS.workdir is None:
        raise app.UsageError("--config and --workdir are required")
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
    import sys

    from interaction_jax.config_lib import check_cli_overrides

    check_cli_overrides(sys.argv)
    from interaction_jax.cli import run as run_cli

    run_cli(main)
