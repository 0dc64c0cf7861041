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
    lines: list[str] = []
    t = Trainer(cfg("train.num_steps=4", "train.on_nonfinite=skip"), str(tmp_path), log=lines.append)
    t.batch_hook = hook(_nan_at(2))
    result = t.run()
    assert result.step == 4 and result.history[-1]["skipped_updates"] == 1 and result.skipped_updates == 1
    assert any("step 3/4" in line and "1 non-finite updates skipped" in line for line in lines), lines
    assert lines[-1] == "[train] finished at step 4 (1 non-finite updates skipped)", lines
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


# ---- learning rate under gradient accumulation ---------------------------------------------------


def _expected_lr(u, updates, warmup, peak, floor):
    """Linear warmup from 0 over `warmup` updates, cosine to `floor` at `updates` (written out, not optax)."""
    if u < warmup:
        return peak * u / warmup
    return floor + (peak - floor) * 0.5 * (1 + np.cos(np.pi * (u - warmup) / (updates - warmup)))


@pytest.mark.parametrize("k", [1, 4])
def test_applied_learning_rate_follows_the_schedule_in_optimizer_updates(tmp_path, k):
    """With b1 = b2 = 0 and no decay or clipping, Adam is sign-SGD: every parameter with a non-zero
    gradient moves by exactly the learning rate, so the applied rate is read off the parameters."""
    updates, peak = 4, 1e-2
    t = Trainer(cfg(f"train.num_steps={updates * k}", f"train.grad_accum_steps={k}", f"train.warmup_steps={k}",
                    f"train.learning_rate={peak}", "train.min_lr_ratio=0.1", "train.adam_b1=0.0",
                    "train.adam_b2=0.0", "train.weight_decay=0.0", "train.grad_clip_norm=0.0",
                    "train.checkpoint_every=0"), str(tmp_path), log=quiet)
    snaps = []  # params after 0, 1, 2, ... micro-steps
    t.batch_hook = hook(lambda s, b: snaps.append(jax.device_get(t.state["params"])))
    result = t.run()
    snaps.append(jax.device_get(t.state["params"]))

    def max_move(a, b):
        return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) for x, y in
                   zip(jax.tree.leaves(a), jax.tree.leaves(b)))

    expected = [_expected_lr(u, updates, 1, peak, 0.1 * peak) for u in range(updates)]
    moves = [max_move(snaps[i + 1], snaps[i]) for i in range(updates * k)]
    applied = [moves[(u + 1) * k - 1] for u in range(updates)]
    np.testing.assert_allclose(applied, expected, rtol=1e-4, atol=1e-9)
    assert all(m == 0.0 for i, m in enumerate(moves) if (i + 1) % k)  # nothing moves mid-accumulation
    logged = [h["learning_rate"] for h in result.history]
    np.testing.assert_allclose(logged, [expected[i // k] for i in range(updates * k)], rtol=1e-5, atol=1e-9)


def test_num_steps_must_be_whole_updates(tmp_path):
    with pytest.raises(ValueError, match="must be a multiple of train.grad_accum_steps=4"):
        Trainer(cfg("train.num_steps=6", "train.grad_accum_steps=4"), str(tmp_path), log=quiet)


# ---- non-finite check without a per-step host sync -----------------------------------------------


def test_nan_stops_naming_its_step_with_the_check_one_step_behind(tmp_path):
    t = Trainer(cfg("train.num_steps=6", "train.log_every=100"), str(tmp_path), log=quiet)
    events = []
    original = t._check_finite
    t._check_finite = lambda step, m: (events.append(("check", step)), original(step, m))
    t.batch_hook = hook(lambda s, b: (events.append(("batch", s)), _nan_at(3)(s, b))[1])
    with pytest.raises(NonFiniteLossError, match="at step 3 "):
        t.run()
    # step 1 (no log/checkpoint there) is checked only once step 2 is on its way; step 3 once step 4 is
    assert events.index(("batch", 2)) < events.index(("check", 1))
    assert events.index(("batch", 4)) < events.index(("check", 3)) and ("check", 4) not in events
    t.manager.wait_until_finished()
    assert t.manager.latest_step() == 2  # step 2 was checked before it was saved


# ---- never lose what is saved --------------------------------------------------------------------


def test_config_json_is_written_only_once_the_run_has_started(tmp_path):
    import json

    workdir = str(tmp_path)
    Trainer(cfg("train.num_steps=2"), workdir, log=quiet).run()
    path = os.path.join(workdir, "config.json")
    before = open(path).read()
    assert json.loads(before)["model"]["d_model"] == 64
    with pytest.raises(ckpt.CheckpointMismatchError):  # a failed resume ...
        Trainer(cfg("train.num_steps=4", "model.d_model=32"), workdir, log=quiet).run()
    with pytest.raises(ValueError, match=r"needs \d+ devices"):  # ... or a bad value ...
        Trainer(cfg("train.num_steps=4", f"mesh.data={jax.device_count() + 1}"), workdir, log=quiet)
    assert open(path).read() == before  # ... leaves the run's config alone
    assert sorted(os.listdir(workdir)) == ["checkpoints", "config.json", "tb"]


def test_sigint_saves_at_the_step_boundary_and_exits_cleanly(tmp_path):
    t = Trainer(cfg("train.num_steps=6", "train.checkpoint_every=0"), str(tmp_path), log=quiet)
    after_first = []  # the SIGINT handler once the first Ctrl-C was handled

    def ctrl_c(k, b):
        if k == 2:
            signal.raise_signal(signal.SIGINT)
            after_first.append(signal.getsignal(signal.SIGINT))

    t.batch_hook = hook(ctrl_c)
    before = signal.getsignal(signal.SIGINT)
    result = t.run()
    assert result.preempted and result.step == 2 and t.manager.latest_step() == 2
    assert after_first == [signal.SIG_DFL]  # a second Ctrl-C would end the process at once
    assert signal.getsignal(signal.SIGINT) is before


class _DiskFull:
    """A commit future that fails as a full disk does, after the save call has returned."""

    def result(self, timeout=None):  # noqa: ARG002
        raise OSError(28, "No space left on device")


def test_a_failed_checkpoint_save_stops_the_run_keeping_the_last_good_one(tmp_path, monkeypatch):
    import orbax.checkpoint as ocp

    original, calls = ocp.StandardCheckpointHandler.async_save, []

    async def async_save(self, *args, **kwargs):
        futures = await original(self, *args, **kwargs)
        calls.append(1)
        return list(futures or []) + [_DiskFull()] if len(calls) == 2 else futures

    monkeypatch.setattr(ocp.StandardCheckpointHandler, "async_save", async_save)
    t = Trainer(cfg("train.num_steps=8", "train.async_checkpointing=True"), str(tmp_path), log=quiet)
    seen = []
    t.batch_hook = hook(lambda k, b: seen.append(k))
    with pytest.raises(ckpt.CheckpointSaveError, match=r"step 4 .*No space left on device.*step 2, is kept"):
        t.run()
    assert max(seen) <= 6  # stopped at the latest at the next save, not at the end of the run
    monkeypatch.undo()
    mgr = ckpt.make_manager(os.path.join(str(tmp_path), "checkpoints"), t.config.train)
    assert mgr.all_steps() == [2]
    assert sorted(os.listdir(os.path.join(str(tmp_path), "checkpoints"))) == ["2"]  # no half-written step 4
    _, step = ckpt.restore(mgr, ckpt.abstract_like(jax.device_get(t.state)))
    assert step == 2


def test_a_corrupt_newest_checkpoint_is_skipped_for_the_newest_intact_one(reference_run, tmp_path):
    _, ref = reference_run
    workdir = str(tmp_path / "run")
    Trainer(cfg("train.num_steps=4"), workdir, log=quiet).run()
    step4 = os.path.join(workdir, "checkpoints", "4")
    damaged = 0
    for root, _, files in os.walk(os.path.join(step4, "state")):
        for f in files:
            if "ocdbt" in root or f.startswith("manifest"):
                open(os.path.join(root, f), "wb").close()  # truncated array data
                damaged += 1
    assert damaged
    lines = []
    r = Trainer(cfg("train.num_steps=6"), workdir, log=lines.append).run()
    assert any("skipped checkpoint step 4" in line and "resumed from step 2" in line for line in lines), lines
    assert r.step == 6 and losses(r) == losses(ref)[2:]  # resumed bitwise from step 2
    assert os.path.isdir(os.path.join(workdir, "checkpoints.skipped", "4"))  # set aside, not deleted


def test_a_curriculum_run_says_when_each_phase_starts(tmp_path):
    lines: list[str] = []
    c = cfg("train.num_steps=4", "train.checkpoint_every=0", "data.task=mix:timespeak=1,others=1",
            "data.curriculum=0:timespeak=1;2:timespeak=1,others=3")
    assert Trainer(c, str(tmp_path), log=lines.append).run().step == 4
    phases = [line for line in lines if "curriculum" in line]
    assert phases == ["[train] curriculum: from step 1, windows come from timespeak 1.00",
                      "[train] curriculum: from step 3, windows come from timespeak 0.25, others 0.75"], lines
