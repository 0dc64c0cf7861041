"""Run one streaming session end to end: `python -m interaction_jax.stream`.

    python -m interaction_jax.stream --config=configs/tiny.py --workdir=runs/tiny --input=user.wav --out=out/
    python -m interaction_jax.stream --config=configs/tiny.py --init=random --out=out/   # synthetic episode
        [--text_events=events.json] [--video=DIR] [--realtime] [--seconds=6] [--task=timespeak]

The user audio is cut into 200 ms chunks and pushed through a `Scheduler` session exactly as a
live client would (typed text from `--text_events`, a JSON list of {"time": s, "text": ...};
video frames from `--video`, image files named by their time in seconds, e.g. `1.5.png`).
Writes to `--out`: model.wav (the model's speech on the session clock, Griffin-Lim, peak-limited
to 0.9, exactly as long as the input),
transcript.json (model words with their text-stream start/end and, re-timed on model.wav by its
voice activity, audio_start/audio_end; `transcript_json`), events.json (control events, delegation
requests, per-step latency, memory) and timeline.png. `--realtime` paces chunks at wall-clock
micro-turns and counts missed deadlines (a step that took longer than one micro-turn).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

import numpy as np
from absl import app, flags

from interaction_jax import cli
from interaction_jax.errors import UserError

FLAGS = flags.FLAGS


def _define_flags() -> None:
    """Command-line flags (defined only when run as a program, so importing `run` never clashes)."""
    cli.DEFINE_config("config", "Config file (default: WORKDIR/config.json, which the trainer writes, else "
                      "configs/tiny.py).")
    flags.DEFINE_string("workdir", None, "Training run directory: parameters from its newest checkpoint.")
    flags.DEFINE_enum("init", "checkpoint", ["checkpoint", "random"],
                      "Parameters: checkpoint (needs --workdir) or random.")
    flags.DEFINE_string("input", None, "User audio file (any rate; more channels are mixed down, with a notice). "
                        "Default: a synthetic episode.")
    flags.DEFINE_string("text_events", None, "JSON list of {time, text} typed user messages.")
    flags.DEFINE_string("video", None, "Directory of frames named <seconds>.<png|jpg>.")
    flags.DEFINE_string("out", "stream_out", "Output directory.")
    flags.DEFINE_bool("realtime", False, "Pace chunks at wall-clock micro-turns and report missed deadlines.")
    flags.DEFINE_float("seconds", 6.0, "Length of the synthetic episode (no --input).", lower_bound=0.0)
    flags.DEFINE_string("task", "timespeak", "Synthetic task when no --input is given.")
    flags.DEFINE_integer("seed", 0, "Session sampling seed.")


@dataclasses.dataclass
class StreamOptions:
    """What to run (the command's flags; see the module docstring)."""

    workdir: str | None = None
    init: str = "checkpoint"
    input: str | None = None
    text_events: str | None = None
    video: str | None = None
    realtime: bool = False
    seconds: float = 6.0
    task: str = "timespeak"
    seed: int = 0


class StreamError(UserError, RuntimeError):
    """A bad command-line input (missing checkpoint, unreadable file ...)."""


def load_params(config, workdir: str):
    """(params, rest) from the newest checkpoint in `workdir/checkpoints` (see `inference.params`)."""
    from interaction_jax.inference.params import ParamsError
    from interaction_jax.inference.params import load_params as _load

    try:
        return _load(config, workdir, log_prefix="[stream]")
    except ParamsError as e:
        raise StreamError(str(e)) from e


def _user_inputs(config, layout, opts: StreamOptions):
    """(audio at 16 kHz, text events [(time, text)], video [(time, frame)], duration)."""
    from interaction_jax.features.audio import load_audio

    sr = int(config.features.sample_rate)
    text, video = [], []
    if opts.input:
        audio = load_audio(opts.input, sr, mono="mix")  # AudioError names the file and the problem
        channels = _channels(opts.input)
        if channels > 1:  # say so: mixing a two-party recording merges the user with the other voice
            print(f"[stream] --input {opts.input} has {channels} channels: mixed down to mono (their mean) "
                  "as the user's audio")
    else:
        from interaction_jax.data import tasks

        ep = tasks.generate(opts.task, opts.seed, duration_s=opts.seconds)
        audio = ep.user_audio
        text = [(e.time, e.text) for e in ep.user_text]
        video = [(f.time, f.image) for f in ep.video]
        print(f"[stream] synthetic {ep.task} episode {ep.episode_id}: {ep.duration:.1f} s")
    duration = len(audio) / sr
    if opts.text_events:
        try:
            with open(opts.text_events) as f:
                events = json.load(f)
            if not isinstance(events, list):
                raise TypeError(f"the file holds a JSON {type(events).__name__}")
            typed = [(float(e["time"]), e["text"]) for e in events]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise StreamError(f"--text_events={opts.text_events}: expected a JSON list of {{time, text}} ({e})") from e
        for k, (t_s, msg) in enumerate(typed):
            if not isinstance(msg, str):
                raise StreamError(f"--text_events={opts.text_events}: event {k} text must be a string, got {msg!r}")
            _check_time(t_s, duration, f"--text_events={opts.text_events}: event {k}")
        text += typed
    if opts.video:
        from PIL import Image, UnidentifiedImageError

        if not os.path.isdir(opts.video):
            raise StreamError(f"--video={opts.video}: not a directory")
        for name in sorted(os.listdir(opts.video)):
            stem, _ = os.path.splitext(name)
            try:
                t_s = float(stem)
            except ValueError:
                raise StreamError(f"--video={opts.video}: frame {name!r} must be named <seconds>.<png|jpg>") from None
            _check_time(t_s, duration, f"--video={opts.video}: frame {name!r}")
            try:
                with Image.open(os.path.join(opts.video, name)) as im:
                    video.append((t_s, np.asarray(im.convert("RGB"))))
            except (UnidentifiedImageError, OSError) as e:
                raise StreamError(f"--video={opts.video}: {name!r} is not a readable image ({e})") from None
    return audio, text, video, duration


def _check_time(t_s: float, duration: float, what: str) -> None:
    """An event time must lie inside the session: [0, duration]."""
    if not np.isfinite(t_s) or t_s < 0 or t_s > duration:
        raise StreamError(f"{what}: time {t_s} s is outside the session (expected 0 <= time <= {duration:.2f} s)")


def json_safe(obj):
    """`obj` with every non-finite float replaced by None (JSON has no Infinity/NaN; `JSON.parse` rejects them)."""
    if isinstance(obj, float):
        return obj if np.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def _channels(path: str) -> int:
    """Channel count of an audio file that `load_audio` has already decoded."""
    import soundfile as sf

    return int(sf.info(path).channels)


def _chunks(layout, audio, text, video, sr):
    """The inputs as a user-only episode, cut into live chunks exactly as the benchmarks feed them."""
    from interaction_jax.data.episode import Episode, TextEvent, VideoFrame
    from interaction_jax.eval.episodes import episode_chunks

    duration = max(len(audio), 1) / sr
    ep = Episode("stream", duration, sample_rate=sr, user_audio=audio,
                 user_text=[TextEvent(msg, t_s) for t_s, msg in text], video=[VideoFrame(t_s, f) for t_s, f in video])
    return episode_chunks(ep, layout)


def transcript_json(words, tokens, model_wav: np.ndarray, sr: int) -> dict:
    """transcript.json: words with their text-stream times and, re-timed on model.wav, `audio_start`/`audio_end`.

    The audio times come from the energy VAD on the model's own waveform (eval/audio_timing.py):
    each word goes to the speech segment it overlaps most and shares its span by characters;
    a word with no audible segment gets null. `speech` lists the segments themselves.
    """
    from interaction_jax.eval.audio_timing import speech_segments, word_audio_times

    segments = speech_segments(model_wav, sr)
    times = word_audio_times(words, segments)
    return {"words": [{"text": w.text, "start": w.start, "end": w.end, "audio_start": t[0] if t else None,
                       "audio_end": t[1] if t else None} for w, t in zip(words, times, strict=True)],
            "speech": [list(seg) for seg in segments],
            "tokens": [{"time": t_s, "id": tok} for t_s, tok in tokens]}


def _timeline(path: str, tr, layout) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(12, 3))
    if len(tr.mel):
        extent = (tr.mel_start, tr.mel_start + len(tr.mel) * layout.frame_ms / 1000, 0, tr.mel.shape[1])
        ax.imshow(tr.mel.T, origin="lower", aspect="auto", extent=extent, cmap="magma")
    for w in tr.words:
        ax.axvspan(w.start, w.end, color="cyan", alpha=0.2)
        y = tr.mel.shape[1] * 0.9 if len(tr.mel) else 1
        ax.text(w.start, y, w.text, fontsize=7, color="white", parse_math=False)
    for t_s, name in tr.events:
        ax.axvline(t_s, color="yellow", lw=0.8)
        ax.text(t_s, 2, name, fontsize=6, color="yellow", rotation=90, parse_math=False)
    ax.set_xlabel("session time (s)")
    ax.set_ylabel("model mel")
    import warnings

    with warnings.catch_warnings():  # untrained models emit bytes the font has no glyph for
        warnings.simplefilter("ignore", UserWarning)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
    plt.close(fig)


def run(config, out_dir: str, opts: StreamOptions | None = None) -> dict:
    """Runs one session; returns the summary written to events.json."""
    opts = opts or StreamOptions()
    from flax import nnx

    from interaction_jax.features.audio import on_input_clock, save_wav
    from interaction_jax.inference.cache import memory_report
    from interaction_jax.inference.engine import StreamEngine
    from interaction_jax.inference.session import Scheduler
    from interaction_jax.model.interaction_model import InteractionModel

    if opts.init == "checkpoint" and not opts.workdir:
        raise StreamError("--init=checkpoint needs --workdir (or pass --init=random)")
    from interaction_jax.streams.layout import StreamLayout

    layout, sr = StreamLayout.from_config(config), int(config.features.sample_rate)
    cli.check_output_dir(out_dir, "--out")
    audio, text, video, duration = _user_inputs(config, layout, opts)  # bad inputs fail before any compile
    model = InteractionModel(config, rngs=nnx.Rngs(int(config.seed)))
    engine = StreamEngine(config, model, slots=1)
    if opts.init == "checkpoint":
        engine.load_params(*load_params(config, opts.workdir))
    t0 = time.perf_counter()
    from interaction_jax.serve import warm_up  # the server's: compile + one throw-away micro-turn

    warm_up(engine)  # compile, and run the feature path and vocoder once, so micro-turn 0 meets its deadline
    print(f"[stream] compiled the micro-turn step in {time.perf_counter() - t0:.1f} s")
    sched = Scheduler(engine)
    session = sched.open_session(seed=opts.seed)
    missed, t_start = 0, time.perf_counter()
    for t, chunk in enumerate(_chunks(layout, audio, text, video, sr)):
        if opts.realtime:  # the chunk is "available" at the end of its micro-turn
            time.sleep(max(0.0, t_start + (t + 1) * layout.micro_turn_s - time.perf_counter()))
        session.push(chunk)
        out = sched.tick()[session.id]
        missed += out.latency_s > layout.micro_turn_s
    tr = session.transcript()
    os.makedirs(out_dir, exist_ok=True)
    # output starts one micro-turn in; on the input's clock and exactly as long as the input
    model_wav = on_input_clock(session.waveform(), tr.mel_start, sr, len(audio))
    save_wav(os.path.join(out_dir, "model.wav"), model_wav, sr)
    with open(os.path.join(out_dir, "transcript.json"), "w") as f:
        doc = transcript_json(tr.words, tr.tokens, model_wav, sr)
        if float(config.model.get("user_speech_loss_weight", 0.0)) > 0.0:  # trained to transcribe the user
            doc["heard"] = [{"text": w.text, "time": w.time} for w in session.heard_words()]
        json.dump(doc, f, indent=1)
    lat = np.array(sched.latencies)
    summary = {
        "duration_s": duration,
        "micro_turns": len(session.outputs),
        "events": [{"time": t_s, "event": name} for t_s, name in tr.events],
        "delegations": [{"time": t_s, "request": req} for t_s, req in session.delegations()],
        "step_latency_ms": {"median": float(np.median(lat) * 1e3), "p99": float(np.percentile(lat, 99) * 1e3)},
        "real_time_factor": float(np.median(lat) / layout.micro_turn_s),
        "realtime": bool(opts.realtime),
        "missed_deadlines": int(missed),
        "memory": memory_report(engine.state, engine.policy, layout),
    }
    summary = json_safe(summary)
    with open(os.path.join(out_dir, "events.json"), "w") as f:
        json.dump(summary, f, indent=1, allow_nan=False)
    _timeline(os.path.join(out_dir, "timeline.png"), tr, layout)
    session.close()
    return summary


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}: stream takes only flags")
    from interaction_jax.config_lib import config_for_run

    opts = StreamOptions(workdir=FLAGS.workdir, init=FLAGS.init, input=FLAGS.input, text_events=FLAGS.text_events,
                         video=FLAGS.video, realtime=FLAGS.realtime, seconds=FLAGS.seconds, task=FLAGS.task,
                         seed=FLAGS.seed)
    if opts.init == "checkpoint" and not opts.workdir:
        raise StreamError("--init=checkpoint needs --workdir (or pass --init=random)")
    if opts.workdir and not os.path.isdir(opts.workdir):
        raise StreamError(f"--workdir={opts.workdir} does not exist (expected a training run directory)")
    if not opts.input:
        from interaction_jax.data import tasks

        tasks.check_task(opts.task)
        if not opts.seconds > 0:
            raise StreamError(f"--seconds={opts.seconds}: expected a positive length for the synthetic episode")
    config = config_for_run(FLAGS.config, FLAGS.workdir if FLAGS.init == "checkpoint" else None, "configs/tiny.py")
    summary = run(config, FLAGS.out, opts)
    print(f"[stream] {summary['micro_turns']} micro-turns, step median {summary['step_latency_ms']['median']:.1f} ms "
          f"(RTF {summary['real_time_factor']:.2f}), {len(summary['events'])} control events, "
          f"missed deadlines {summary['missed_deadlines']}; wrote {FLAGS.out}/model.wav, transcript.json, "
          "events.json, timeline.png")


if __name__ == "__main__":
    cli.run(main, name="stream", define_flags=_define_flags)
