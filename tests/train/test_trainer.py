"""Trainer: compiles once, resumes bitwise, handles SIGTERM and non-finite losses, logs to TensorBoard."""

import os
import signal

import jax
import numpy as np
import pytest
from conftest import config_path

from interaction_jax.config_lib import load_config
from interaction_jax.train import checkpoint as ckpt
from interaction_jax.train.metrics import read_scalars, read_tags
from interaction_jax.train.trainer import NonFiniteLossError, Trainer

BASE = [
    "data.num_episodes=6",
    "data.eval_num_episodes=2",
    "data.episode_seconds=3.0",
    "data.window_micro_turns=4",
    "data.batch_size=2",
    "train.log_every=1",
    "train.eval_every=0",
    "train.eval_batches=1",
    "train.checkpoint_every=2",
    "train.warmup_steps=2",
    "train.async_checkpointing=False",
]


def cfg(*extra):
    return load_config(config_path("tiny.py"), BASE + list(extra))


def quiet(*_a, **_k):
    pass


def losses(result):
    return [(h["step"], h["loss"]) for h in result.history]


def hook(fn):
    """Trainer.batch_hook calling `fn(step, batch)` (returning None keeps the batch)."""
    return lambda step, batch: fn(step, batch) or batch


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    """Six uninterrupted steps."""
    t = Trainer(cfg("train.num_steps=6"), str(tmp_path_factory.mktemp("ref")), log=quiet)
    result = t.run()
    return t, result


def test_train_step_compiles_once(reference_run):
    trainer, result = reference_run
    assert result.step == 6 and len(result.history) == 6
    assert trainer.train_step._cache_size() == 1
    assert all(np.isfinite(loss) for _, loss in losses(result))


def test_sigterm_saves_and_resume_is_bitwise_identical(reference_run, tmp_path):
    _, ref = reference_run
    workdir = str(tmp_path / "run")
    first = Trainer(cfg("train.num_steps=6"), workdir, log=quiet)

    def preempt(k, batch):
        if k == 3:
            signal.raise_signal(signal.SIGTERM)

    first.batch_hook = hook(preempt)
    r1 = first.run()
    assert r1.preempted and r1.step == 3
    assert first.manager.latest_step() == 3
    second = Trainer(cfg("train.num_steps=6"), workdir, log=quiet)
    r2 = second.run()
    assert r2.step == 6
    assert losses(r1) + losses(r2) == losses(ref)  # bitwise: same floats, same steps


def _nan_at(step):
    def inject(k, batch):
        if k == step:
            batch = dict(batch)
            batch["mel_targets"] = np.full_like(batch["mel_targets"], np.nan)
            return batch

    return inject


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    t = Trainer(cfg("train.num_steps=6"), str(tmp_path), log=quiet)
    t.batch_hook = hook(_nan_at(3))
    with pytest.raises(NonFiniteLossError, match="step 3"):
        t.run()
    t.manager.wait_until_finished()
    assert t.manager.latest_step() == 2
    state, step = ckpt.restore(t.manager, ckpt.abstract_like(jax.device_get(t.state)))
    assert step == 2 and all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state["params"]))


def test_non_finite_update_can_be_skipped(tmp_path):
    t = Trainer(cfg("train.num_steps=4", "train.on_nonfinite=skip"), str(tmp_path), log=quiet)
    t.batch_hook = hook(_nan_at(2))
    result = t.run()
    assert result.step == 4 and result.history[-1]["skipped_updates"] == 1
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(t.state["params"]))


def test_checkpoint_from_another_config_names_the_shapes(reference_run):
    trainer, _ = reference_run
    other = Trainer(cfg("train.num_steps=6", "model.d_model=32"), str(trainer.workdir) + "_other", log=quiet)
    with pytest.raises(ckpt.CheckpointMismatchError, match=r"\(64,|64\)"):
        ckpt.restore(trainer.manager, ckpt.abstract_like(other.state))


def test_tensorboard_has_losses_rates_moe_load_and_eval_summaries(tmp_path):
    t = Trainer(
        cfg("train.num_steps=2", "train.eval_every=2", "model.layer_pattern=dense,moe", "model.moe.impl=gather"),
        str(tmp_path),
        log=quiet,
    )
    t.run()
    t.writer.flush()
    tags = read_tags(os.path.join(str(tmp_path), "tb"))
    for tag in ("loss", "text_loss", "audio_loss", "learning_rate", "grad_norm", "tokens_per_s", "mfu",
                "moe/expert_load_0", "load_balance_loss", "eval/loss"):
        assert tags.get(tag) == "scalars", tag
    assert tags["eval/generated_speech"] == "audio" and tags["eval/timeline"] == "images"
    lr = dict(read_scalars(os.path.join(str(tmp_path), "tb"))["learning_rate"])
    assert lr[1] == 0.0 and lr[2] > 0.0  # warmup starts at zero
