"""One process of a 2-process `jax.distributed` run on 127.0.0.1 (4 CPU devices each, gloo).

    python multihost_worker.py train CONFIG WORKDIR PORT PROCESS_ID   # a process of the 2-process run
    python multihost_worker.py reference CONFIG WORKDIR REFDIR         # one process, 8 devices, same data
    python multihost_worker.py summaries CONFIG WORKDIR PORT PROCESS_ID  # one evaluation of the 2-process run

Prints `RESULT {json}` with per-step losses (train / reference) or what an evaluation logged and
wrote (summaries).
"""

import json
import os
import sys

MODE = sys.argv[1]
N_DEV = 4 if MODE in ("train", "summaries") else 8
os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={N_DEV}"

import jax  # noqa: E402
import numpy as np  # noqa: E402

OVERRIDES = [
    "train.eval_batches=1",
    "data.num_episodes=8",
    "data.eval_num_episodes=2",
    "data.episode_seconds=2.0",
    "data.window_micro_turns=3",
    "data.batch_size=8",
    "train.num_steps=3",
    "train.log_every=1",
    "train.eval_every=0",
    "train.checkpoint_every=0",
    "train.warmup_steps=1",
    "train.async_checkpointing=False",
]


def main():
    from interaction_jax.config_lib import load_config

    config = load_config(sys.argv[2], OVERRIDES)
    workdir = sys.argv[3]
    if MODE in ("train", "summaries"):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(f"127.0.0.1:{sys.argv[4]}", num_processes=2, process_id=int(sys.argv[5]))
    from interaction_jax.data.pipeline import make_iterator
    from interaction_jax.train.trainer import Trainer

    if MODE == "summaries":
        return summaries(Trainer(config, workdir, log=LOGS.append), config, make_iterator)

    trainer = Trainer(config, workdir, log=lambda *a: None)
    if MODE == "reference":
        # the same global batches the two processes feed: process 0's shard, then process 1's
        its = [make_iterator(config, trainer.train_source, process_index=i, process_count=2) for i in range(2)]

        def global_batch(step, _):
            parts = [next(it) for it in its]
            return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

        trainer.batch_hook = global_batch
    result = trainer.run()
    out = {"losses": [h["loss"] for h in result.history], "process": jax.process_index(), "devices": jax.device_count()}
    if MODE == "reference":
        # the checkpoint written by the 2-process run restores in one process
        other = Trainer(config, sys.argv[4], log=lambda *a: None)
        out["restored_step"] = other.maybe_restore()
        a = jax.tree.leaves(jax.device_get(other.state["params"]))
        b = jax.tree.leaves(jax.device_get(trainer.state["params"]))
        out["restored_max_diff"] = max(float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) for x, y in zip(a, b))
    print("RESULT " + json.dumps(out), flush=True)


LOGS: list[str] = []


def summaries(trainer, config, make_iterator):
    """One evaluation with summaries on: what each process logged and wrote, and the eval loss."""
    written = []
    trainer.writer.audio = lambda step, tag, audio, sr: written.append([tag, int(np.size(audio)),
                                                                        bool(np.all(np.isfinite(audio)))])
    trainer.writer.image = lambda step, tag, image: written.append([tag, list(np.shape(image))])
    out = {"process": jax.process_index(), "devices": jax.device_count()}
    sums = trainer.evaluate(0)
    out.update(written=written, logs=LOGS, eval_loss=float(sums["loss"]))
    print("RESULT " + json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
