"""The training loop: data -> jitted step -> logs, evals, checkpoints; resumable and preemptible.

    python -m interaction_jax.train --config=configs/tiny.py --workdir=runs/tiny

* Resumes from the newest committed checkpoint in `workdir/checkpoints` (train state and the
  Grain iterator position together), so a killed run continues bitwise-identically.
* SIGTERM (preemption) or Ctrl-C (SIGINT) -> save at the next step boundary and exit cleanly;
  a second one of the same signal exits at once.
* A corrupt or incomplete newest checkpoint is skipped (and moved aside) for the newest intact
  one; `workdir/config.json` is written only once the run has started (after the restore), so a
  failed resume or a bad value never replaces the config of a run whose checkpoints are fine.
* A non-finite loss stops the run with a message naming the step (the last good checkpoint is
  kept), or skips that update when `train.on_nonfinite="skip"` (counted in the logs). The check
  lags one step: step s's flag is read after step s+1 is dispatched, so the host never waits for
  the device except at logs, evals and checkpoints, where the current step is checked first
  (a non-finite state is never saved).
* A checkpoint save that fails stops the run (`CheckpointSaveError`), the last good one kept.
* A corrupt record of a prepared store is skipped with a warning naming its shard and index
  (`data.on_corrupt_record`, `data.max_corrupt_records`; see `data/corrupt.py`); the count is
  logged with the losses (`corrupt_records_skipped`) and at the end of the run, like the
  number of skipped non-finite updates (`skipped_updates`).
* `train.num_steps` counts training steps (micro-batches); with `train.grad_accum_steps=k` an
  optimizer update takes k of them and the learning-rate schedule is laid out over the
  num_steps / k updates (`optimizer.learning_rate_schedule`); the logged learning rate is the
  one applied to that step's gradients.
* TensorBoard events in `workdir/tb`: every loss term, learning rate, grad norm, tokens/s,
  MFU, MoE expert load; at eval intervals the held-out losses, a generated-speech audio
  summary and a micro-turn timeline image (the forward runs on every process of a multi-process
  run, process 0 writes them).
"""

from __future__ import annotations

import dataclasses
import math
import os
import signal
import time

import jax
import numpy as np

from interaction_jax.config_lib import ConfigError
from interaction_jax.data.corrupt import SkipCorrupt
from interaction_jax.data.curriculum import parse_curriculum
from interaction_jax.data.pipeline import make_iterator
from interaction_jax.data.sources import open_source
from interaction_jax.parallel import make_mesh
from interaction_jax.streams.layout import StreamLayout
from interaction_jax.train import checkpoint as ckpt
from interaction_jax.train.metrics import MetricWriter
from interaction_jax.train.mfu import device_peak_flops, transformer_train_flops_per_token
from interaction_jax.train.optimizer import accumulation_steps
from interaction_jax.train.state import abstract_state, create_train_state
from interaction_jax.train.step import make_eval_step, make_train_step, to_global_batch


class NonFiniteLossError(RuntimeError):
    """The loss or gradients became NaN/inf."""


@dataclasses.dataclass
class TrainResult:
    step: int
    history: list[dict]  # logged metrics (one dict per log interval)
    eval_history: list[dict]
    preempted: bool = False
    skipped_updates: int = 0  # non-finite updates skipped (train.on_nonfinite="skip")
    corrupt_records: int = 0  # corrupt training records skipped (data.on_corrupt_record="skip")


def _to_host(metrics: dict) -> dict:
    out = {}
    for k, v in jax.device_get(metrics).items():
        v = np.asarray(v)
        out[k] = v if v.ndim else float(v)
    return out


def _flops_per_token(config) -> tuple[float, int, int]:
    from interaction_jax.summary import count_params

    total, active = count_params(config)
    layout = StreamLayout.from_config(config)
    seq = layout.seq_len(int(config.data.window_micro_turns))
    m = config.model
    d_attn = int(m.num_heads) * int(m.head_dim)
    return transformer_train_flops_per_token(active, int(m.num_layers), seq, d_attn), total, active


def _check_not_empty(config, train_source, eval_source) -> None:
    """An empty store (the eval one only if evaluating) is named before the run directory is touched."""
    d = config.data
    if len(train_source) == 0:
        raise ConfigError(f"data.data_dir={d.data_dir} holds no episodes; expected a store with at least one "
                          "(prepare one with --num_episodes >= 1)")
    if len(eval_source) == 0 and int(config.train.eval_every or 0):
        raise ConfigError(f"data.eval_data_dir={d.eval_data_dir} holds no episodes, but train.eval_every="
                          f"{config.train.eval_every} evaluates on them; give it episodes or set train.eval_every=0")


class Trainer:
    """Owns the run's state; `run()` trains to `train.num_steps` (or until preempted)."""

    def __init__(self, config, workdir: str, *, mesh=None, log=print):
        self.config, self.workdir, self.log = config, workdir, log
        k = accumulation_steps(config.train)
        if int(config.train.num_steps) % k:
            raise ConfigError(
                f"train.num_steps={config.train.num_steps} must be a multiple of train.grad_accum_steps={k} "
                f"(num_steps counts micro-batches and every optimizer update takes {k} of them)"
            )
        # the data is opened first: a missing or damaged store fails before the run directory is touched
        self.layout = StreamLayout.from_config(config)
        self.train_source = SkipCorrupt.from_config(config, open_source(config, split="train"))
        self.eval_source = SkipCorrupt.from_config(config, open_source(config, split="eval"))
        _check_not_empty(config, self.train_source, self.eval_source)
        os.makedirs(workdir, exist_ok=True)
        self.mesh = mesh or make_mesh(config.mesh)
        shards = int(self.mesh.shape["data"]) * int(self.mesh.shape["fsdp"])
        if int(config.data.batch_size) % shards:
            raise ConfigError(
                f"data.batch_size={config.data.batch_size} must be divisible by the batch shards "
                f"(mesh data x fsdp = {shards}); raise the batch size or change config.mesh"
            )
        self.setup, self.state = create_train_state(config, self.mesh)
        self.train_step = make_train_step(config, self.setup)
        self.eval_step = make_eval_step(config, self.setup)
        self.data = make_iterator(config, self.train_source)
        self.manager = ckpt.make_manager(os.path.join(workdir, "checkpoints"), config.train)
        self.writer = MetricWriter(os.path.join(workdir, "tb"), enabled=jax.process_index() == 0)
        self._preempt = False
        self._skipped = 0  # non-finite updates skipped this run (train.on_nonfinite="skip")
        # Optional host-side hook `fn(step, batch) -> batch` (fault injection in tests, debugging).
        self.batch_hook = None
        self._predict = None  # jitted forward for eval summaries, built on first use
        self.flops_per_token, self.total_params, self.active_params = _flops_per_token(config)
        self.peak_flops, self.peak_source = device_peak_flops()
        self.tokens_per_step = int(config.data.batch_size) * self.layout.seq_len(int(config.data.window_micro_turns))

    # ---- checkpoints ---------------------------------------------------------------------
    def maybe_restore(self) -> int:
        """Resumes from the newest intact checkpoint (skipping damaged newer ones); 0 when there is none."""
        restored = ckpt.restore_newest_intact(self.manager, abstract_state(self.state), self.data, log=self.log)
        if restored is None:
            return 0
        self.state, step = restored
        self.log(f"[train] resumed from {self.manager.directory}/{step}")
        return step

    def save(self, step: int, *, force: bool = False) -> None:
        ckpt.save(self.manager, step, self.state, self.data, force=force)

    def _on_signal(self, signum, frame):  # noqa: ARG002
        name = signal.Signals(signum).name
        self.log(f"[train] {name}: will checkpoint at the next step boundary and exit (send again to exit now)")
        self._preempt = True
        signal.signal(signum, signal.SIG_DFL)  # a second one terminates at once

    def _check_finite(self, step: int, metrics: dict) -> None:
        """Reads step `step`'s finite flag (a device scalar); stops the run or counts the skip."""
        if bool(jax.device_get(metrics["finite"])):
            return
        if self.config.train.on_nonfinite == "stop":
            loss = float(jax.device_get(metrics["loss"]))
            raise NonFiniteLossError(
                f"non-finite loss/gradients at step {step} (loss={loss}); stopping. "
                f"The last good checkpoint is kept in {self.manager.directory} "
                f"(step {self.manager.latest_step()}). "
                "Set train.on_nonfinite='skip' to skip such updates."
            )
        self._skipped += 1

    # ---- evaluation ------------------------------------------------------------------------
    def evaluate(self, step: int, *, summaries: bool = True) -> dict:
        cfg = self.config
        it = make_iterator(cfg, self.eval_source, seed=int(cfg.data.eval_seed), curriculum=False)
        rng = jax.random.key(12345)
        sums: dict[str, float] = {}
        batch = None
        n = int(cfg.train.eval_batches)
        for _ in range(n):
            host_batch = next(it)
            batch = to_global_batch(host_batch, self.setup)
            m = _to_host(self.eval_step(self.state, batch, rng))
            for k, v in m.items():
                if np.ndim(v) == 0:
                    sums[k] = sums.get(k, 0.0) + v / n
        self.writer.scalars(step, {f"eval/{k}": v for k, v in sums.items()})
        if summaries and batch is not None:
            self._summaries(step, host_batch)
        return sums

    def _summaries(self, step: int, host_batch: dict) -> None:
        """Called on every process (the forward is a collective on a multi-host mesh); process 0 writes.
        A failure is logged, never raised: summaries must not kill a run."""
        try:
            one, text_pred, mel = self._summary_predictions(step, host_batch)
        except Exception as e:  # noqa: BLE001 - the same program on every process, so every one skips
            self.log(f"[train] eval summaries skipped: the summary forward failed: {e!r}")
            return
        if jax.process_index() != 0:
            return
        try:
            self._write_summaries(step, one, text_pred, mel)
        except Exception as e:  # noqa: BLE001 - rendering / writing (Griffin-Lim, matplotlib, disk)
            self.log(f"[train] eval summaries not written: {e!r}")

    def _summary_predictions(self, step: int, host_batch: dict) -> tuple[dict, np.ndarray, np.ndarray]:
        """(process 0's first eval window, its argmax text at MODEL_TEXT, flow-head mel at MODEL_AUDIO).

        Multi-host safe without gathering parameters: the window is broadcast from process 0, the
        jitted forward runs on the sharded state on every process, and only the predictions (one
        window's) come out, replicated, so each process reads them locally.
        """
        from flax import nnx
        from jax.experimental import multihost_utils
        from jax.sharding import NamedSharding
        from jax.sharding import PartitionSpec as P

        from interaction_jax.streams.layout import Kind

        local = {k: np.asarray(v[:1]) for k, v in host_batch.items()}
        one = multihost_utils.broadcast_one_to_all(local)  # no-op on one process
        one = {k: np.asarray(v).astype(local[k].dtype) for k, v in one.items()}  # the psum made bools ints
        W = int(np.ptp(one["micro_turn"][0])) + 1  # micro-turns in the window (video may be in fewer)
        audio_idx = self.layout.kind_indices(Kind.MODEL_AUDIO, W).reshape(-1)
        text_idx = self.layout.kind_indices(Kind.MODEL_TEXT, W).reshape(-1)
        replicated = NamedSharding(self.mesh, P())
        if self._predict is None:
            graphdef = self.setup.graphdef

            def predict(params, rest, batch, seed):
                model = nnx.merge(graphdef, params, rest)
                out = model(batch)
                key = jax.random.key(seed)
                return out["text_logits"][0, text_idx].argmax(-1), model.sample_mel(out["hidden"][0, audio_idx], key)

            self._predict = jax.jit(predict, out_shardings=replicated)
        inputs = multihost_utils.host_local_array_to_global_array(
            (one, np.asarray(step, np.uint32)), self.mesh, P())
        text_pred, mel = self._predict(self.state["params"], self.state["rest"], *inputs)
        return one, np.asarray(text_pred.addressable_data(0)), np.asarray(mel.addressable_data(0))

    def _write_summaries(self, step: int, one: dict, text_pred: np.ndarray, mel: np.ndarray) -> None:
        """Generated speech (flow-head samples -> Griffin-Lim) and a timeline of predictions."""
        from interaction_jax.features.mel import FeatureParams, mel_to_audio
        from interaction_jax.streams.layout import Kind
        from interaction_jax.streams.plot import plot_window
        from interaction_jax.streams.tokenizer import make_tokenizer

        W = int(np.ptp(one["micro_turn"][0])) + 1  # micro-turns in the window (video may be in fewer)
        audio_idx = self.layout.kind_indices(Kind.MODEL_AUDIO, W).reshape(-1)
        text_idx = self.layout.kind_indices(Kind.MODEL_TEXT, W).reshape(-1)
        window = {k: np.asarray(v[0]).copy() for k, v in one.items()}
        window["mel_targets"][audio_idx] = mel
        window["text_targets"][text_idx] = np.asarray(text_pred)
        params = FeatureParams.from_config(self.config.features)
        audio = mel_to_audio(mel.reshape(-1, self.layout.n_mels), params, n_iter=16)
        self.writer.audio(step, "eval/generated_speech", audio, params.sample_rate)
        path = os.path.join(self.workdir, f"timeline_{step}.png")
        plot_window(window, self.layout, make_tokenizer(self.config.text), path, title=f"step {step}: predictions")
        import matplotlib.image as mpimg

        self.writer.image(step, "eval/timeline", (mpimg.imread(path)[..., :3] * 255).astype(np.uint8))
        os.remove(path)

    # ---- the loop ----------------------------------------------------------------------------
    def run(self) -> TrainResult:
        cfg = self.config.train
        start = self.maybe_restore()
        if jax.process_index() == 0:  # only now: a failed resume must not replace the run's config
            from interaction_jax.config_lib import save_run_config

            save_run_config(self.config, self.workdir)  # evaluate / stream rebuild the model from it
        old_handlers = {}
        if _main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                old_handlers[sig] = signal.signal(sig, self._on_signal)
        history, eval_history = [], []
        self.log(
            f"[train] {self.total_params:,} params ({self.active_params:,} active), "
            f"{self.tokens_per_step} tokens/step, mesh {dict(self.mesh.shape)}, peak {self.peak_flops / 1e9:.1f} "
            f"GFLOP/s ({self.peak_source})"
        )
        num_steps, log_every = int(cfg.num_steps), int(cfg.log_every)
        eval_every, ckpt_every = int(cfg.eval_every or 0), int(cfg.checkpoint_every or 0)
        poll_saves = jax.process_count() == 1  # multi-host: only at save steps, where all processes agree
        step, t_last = start, time.perf_counter()
        t_start, since_log, interval = t_last, 0, []
        pending = None  # (step, metrics) whose finite flag is not read yet
        self._skipped = 0
        phase_starts = {ph.start_step: ph for ph in parse_curriculum(str(self.config.data.get("curriculum", "")))}
        try:
            while step < num_steps:
                if step in phase_starts:  # the batch about to be read is the phase's first
                    ph = phase_starts[step]
                    mix = ", ".join(f"{t} {w:.2f}" for t, w in zip(ph.tasks, ph.weights))
                    mix = "every episode as prepared" if ph.tasks == ("all",) else mix
                    self.log(f"[train] curriculum: from step {step + 1}, windows come from {mix}")
                host_batch = next(self.data)
                if self.batch_hook is not None:
                    host_batch = self.batch_hook(step + 1, host_batch)
                batch = to_global_batch(host_batch, self.setup)
                self.state, metrics = self.train_step(self.state, batch)
                step += 1
                since_log += 1
                if pending is not None:  # the previous step, which ran while this one was dispatched
                    self._check_finite(*pending)
                pending = (step, metrics)
                interval.append(metrics)
                is_log = step % log_every == 0 or step == num_steps
                is_eval = bool(eval_every) and step % eval_every == 0
                is_ckpt = bool(ckpt_every) and step % ckpt_every == 0
                if is_log or is_eval or is_ckpt or self._preempt:
                    self._check_finite(*pending)  # never log, evaluate or save past a bad step
                    pending = None
                if poll_saves:
                    ckpt.check_saves(self.manager)
                if is_log:
                    history.append(self._log_interval(step, start, since_log, interval, t_last, t_start))
                    interval, t_last, since_log = [], time.perf_counter(), 0
                if is_eval:
                    eval_history.append({"step": step, **self.evaluate(step)})
                    t_last, since_log = time.perf_counter(), 0  # keep eval time out of the training rates
                if self._preempt:
                    self.save(step, force=True)
                    ckpt.wait_for_saves(self.manager)
                    self.log(f"[train] preempted: saved step {step} and exiting{self._skip_summary()}")
                    return TrainResult(step, history, eval_history, True, self._skipped, self.train_source.count)
                if is_ckpt:
                    self.save(step)
            if self.manager.latest_step() != step:
                self.save(step, force=True)
            ckpt.wait_for_saves(self.manager)
        finally:
            for sig, handler in old_handlers.items():
                signal.signal(sig, handler)
            self.writer.flush()
        self.log(f"[train] finished at step {step}{self._skip_summary()}")
        return TrainResult(step, history, eval_history, False, self._skipped, self.train_source.count)

    def _skip_summary(self) -> str:
        """What this run left out, for its last line ('' when nothing was skipped and nothing could be)."""
        parts = []
        if self._skipped or self.config.train.on_nonfinite == "skip":
            parts.append(f"{self._skipped} non-finite updates skipped")
        if self.train_source.count:
            parts.append(f"{self.train_source.count} corrupt records skipped")
        return f" ({', '.join(parts)})" if parts else ""

    def _log_interval(self, step, start, interval_steps, interval, t_last, t_start) -> dict:
        """Logs the interval's means (non-finite, skipped steps left out) and rates; one device fetch."""
        cfg = self.config.train
        jax.block_until_ready(self.state["step"])
        now = time.perf_counter()
        steps_done = step - start
        dt = max(now - t_last, 1e-9)
        steps_per_s = interval_steps / dt
        tokens_per_s = steps_per_s * self.tokens_per_step
        n_dev = jax.device_count()
        mfu = tokens_per_s * self.flops_per_token / (self.peak_flops * n_dev)
        eta = (int(cfg.num_steps) - step) / steps_per_s
        host = [_to_host(m) for m in jax.device_get(interval)]
        good = [m for m in host if m["finite"]] or host
        scalars = {k: float(np.mean([m[k] for m in good])) for k, v in host[-1].items() if np.ndim(v) == 0}
        scalars["learning_rate"] = host[-1]["learning_rate"]  # the rate at this step, not an interval mean
        scalars.update(
            {"steps_per_s": steps_per_s, "tokens_per_s": tokens_per_s, "mfu": mfu, "skipped_updates": self._skipped,
             "corrupt_records_skipped": self.train_source.count}
        )
        if "expert_counts" in host[-1]:
            counts = np.sum([np.asarray(m["expert_counts"], np.float64) for m in good], axis=0)
            load = counts / max(counts.sum(), 1.0)
            scalars.update({f"moe/expert_load_{e}": float(x) for e, x in enumerate(load)})
            scalars["moe/max_load_ratio"] = float(load.max() * len(load)) if len(load) else 0.0
        self.writer.scalars(step, scalars)
        skipped = f", {self._skipped} non-finite updates skipped" if self._skipped else ""
        if self.train_source.count:
            skipped += f", {self.train_source.count} corrupt records skipped"
        self.log(
            f"[train] step {step}/{cfg.num_steps} loss {scalars.get('loss', float('nan')):.4f} "
            f"(text {scalars.get('text_loss', float('nan')):.3f} audio {scalars.get('audio_loss', float('nan')):.3f}) "
            f"lr {scalars['learning_rate']:.3g} "
            f"{steps_per_s:.2f} steps/s {tokens_per_s:,.0f} tok/s MFU {100 * mfu:.1f}% "
            f"ETA {_fmt_eta(eta)} ({steps_done} steps this run{skipped}, {time.perf_counter() - t_start:.0f}s)"
        )
        return {"step": step, **scalars}


def _fmt_eta(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()
