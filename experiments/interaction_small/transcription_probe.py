"""Teacher-forced probe of a trained run: how much of what the user says does the model transcribe?

    python experiments/interaction_small/transcription_probe.py --workdir=runs/interaction_small \
        [--config=experiments/interaction_small/config.py] [--step=-1] \
        [--out=experiments/interaction_small/transcription_probe.json]

On the run's held-out-loss episodes (`data.eval_data_dir`, whole episodes from position 0) it
runs the training forward once per batch and counts argmax hits of the text head:

* `user_speech_word_accuracy`: at USER_AUDIO positions whose `user_speech_targets` token is a
  word token (not NOTHING), the fraction the head names (the auxiliary transcript,
  `model.user_speech_loss_weight`); TensorBoard's `user_speech_accuracy` also counts the far more
  common NOTHING targets, so it says little about recognition.
* `model_text_word_accuracy`: the same on the model's own text targets that are not NOTHING.

Teacher-forced: every input is the episode's own, so this measures recognition, not behaviour
in a live session (the benchmarks do that).
"""

from __future__ import annotations

import json
import os
import platform

import numpy as np
from absl import flags

FLAGS = flags.FLAGS
HERE = os.path.dirname(os.path.abspath(__file__))


def _define_flags() -> None:
    flags.DEFINE_string("workdir", "runs/interaction_small", "The experiment's workdir (run/ and data/ inside).")
    flags.DEFINE_string("config", os.path.join(HERE, "config.py"), "The run's config file.")
    flags.DEFINE_integer("step", -1, "Checkpoint step (-1: the newest).")
    flags.DEFINE_string("out", os.path.join(HERE, "transcription_probe.json"), "JSON output.")


def probe(config, params, rest) -> dict:
    """Counts over every eval batch (see the module docstring)."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from interaction_jax.data.pipeline import make_iterator
    from interaction_jax.data.sources import open_source
    from interaction_jax.model.interaction_model import InteractionModel
    from interaction_jax.streams.layout import Kind
    from interaction_jax.streams.tokenizer import Control

    graphdef, _, _ = nnx.split(InteractionModel(config, rngs=nnx.Rngs(params=0)), nnx.Param, ...)
    model = nnx.merge(graphdef, params, rest)
    logits = jax.jit(lambda b: model(b)["text_logits"])
    nothing = int(Control.NOTHING)
    n = {"user_speech_words": 0, "user_speech_hits": 0, "model_text_words": 0, "model_text_hits": 0, "windows": 0}
    for batch in make_iterator(config, open_source(config, split="eval"), worker_count=0, num_epochs=1, seed=0,
                               curriculum=False):
        batch = {k: np.asarray(v) for k, v in batch.items()}
        pred = np.asarray(jnp.argmax(logits(batch), -1))
        heard = (batch["kinds"] == int(Kind.USER_AUDIO)) & batch["valid"].astype(bool)
        words = heard & (batch["user_speech_targets"] != nothing)
        n["user_speech_words"] += int(words.sum())
        n["user_speech_hits"] += int(((pred == batch["user_speech_targets"]) & words).sum())
        own = (batch["text_loss_mask"] > 0) & (batch["text_targets"] != nothing)
        n["model_text_words"] += int(own.sum())
        n["model_text_hits"] += int(((pred == batch["text_targets"]) & own).sum())
        n["windows"] += int(batch["kinds"].shape[0])
    return {
        **n,
        "user_speech_word_accuracy": n["user_speech_hits"] / max(n["user_speech_words"], 1),
        "model_text_word_accuracy": n["model_text_hits"] / max(n["model_text_words"], 1),
    }


def main(argv) -> None:
    del argv
    import jax

    from interaction_jax.config_lib import load_config
    from interaction_jax.inference.params import load_params

    run_dir = os.path.join(FLAGS.workdir, "run")
    saved = os.path.join(run_dir, "config.json")
    overrides = [f"data.eval_data_dir={os.path.join(FLAGS.workdir, 'data', 'eval')}"]
    config = load_config(FLAGS.config, overrides)
    params, rest = load_params(config, run_dir, step=None if FLAGS.step < 0 else FLAGS.step, log_prefix="[probe]")
    out = probe(config, params, rest)
    steps = [int(s) for s in os.listdir(os.path.join(run_dir, "checkpoints")) if s.isdigit()]
    out.update(workdir=FLAGS.workdir, step=FLAGS.step if FLAGS.step >= 0 else max(steps),
               run_config=saved if os.path.exists(saved) else None,
               user_speech_loss_weight=float(config.model.get("user_speech_loss_weight", 0.0)),
               hardware=f"{platform.machine()}, JAX {jax.__version__} on {jax.default_backend()}")
    print("| measure | hits / targets | accuracy |\n| --- | --- | --- |")
    for key in ("user_speech", "model_text"):
        print(f"| {key} words | {out[key + '_hits']} / {out[key + '_words']} | {out[key + '_word_accuracy']:.3f} |")
    os.makedirs(os.path.dirname(os.path.abspath(FLAGS.out)), exist_ok=True)
    with open(FLAGS.out, "w") as f:
        json.dump(out, f, indent=2)
    print(f"[probe] wrote {FLAGS.out}")


if __name__ == "__main__":
    from interaction_jax.cli import run

    run(main, define_flags=_define_flags)
