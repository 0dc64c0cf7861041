"""Full-Duplex-Bench compatibility: run a checkpoint on FDB-style sample folders, write what its scripts read.

Full-Duplex-Bench (Lin et al. 2025) lays a task out as one folder per sample holding `input.wav`
(the user's speech stream) and the task's annotation JSON (`interrupt.json`, `turn_taking.json`,
`pause.json`); a system writes `output.wav` beside it (its speech, same clock as the input; the
benchmark's VAD assumes 16 kHz) and the benchmark's ASR step writes `output.json` (`{"text": ...,
"chunks": [{"text": word, "timestamp": [start_s, end_s]}, ...]}`) that its evaluators score.

`export_fdb(engine, input_root, output_root)` runs every sample through live streaming sessions
(`runner.run_episodes`, `engine.slots` samples per tick, audio only: FDB has no typed text) and
writes per sample, atomically (temp file + rename, so a crash never leaves half a file):
  * `output.wav`: mono 16 kHz PCM, the model's speech (Griffin-Lim of its mel output; silence
    before the first output micro-turn, `mel_start`), exactly as long as the input;
  * `output.json`: the schema above built from the model's *own* text stream (times in seconds
    from the start of the input, ends clipped to its duration), so no ASR is needed and the
    benchmark's evaluators score a checkpoint directly;
  * the sample's annotation JSONs, copied when `output_root` is not `input_root`, so FDB's
    scripts can run on `output_root` alone.
It refuses to overwrite existing outputs unless `overwrite=True`, and checks every `input.wav`
before compiling anything (a missing or undecodable one raises `FdbError` naming the sample).

`write_fdb_inputs(episodes, root)` lays synthetic episodes out the same way, one folder per
episode id with:
  * `input.wav`: the user channel (user + other voices + background speech + noise), 16 kHz mono;
  * `metadata.json` (this codebase's annotation): episode_id, task, duration, instruction_mode,
    user_words / other_words (`{"text", "timestamp": [s, e]}`), grading windows
    (`{"kind", "start", "end", "expected"}`) and the generator's metadata (timings such as
    `interruption_onset`, `question_ends`);
  * `transcription.json`: the user channel's words in FDB's chunk format (as FDB ships);
  * FDB's own annotation where a task maps onto one: `interrupt.json` for interruption episodes
    with an interruption (`[{"context", "interrupt", "timestamp": [onset, end of the
    interruption]}]`, FDB's user-interruption task) and `turn_taking.json` for turn-taking
    (`[{"text": question, "timestamp": [end of the first question, start of the next user
    speech or the end]}]`; FDB's smooth-turn-taking evaluator reads `timestamp[0]`).
Episodes with typed messages are skipped by default (FDB input is audio only; the instruction
would be missing).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Sequence

import numpy as np

from interaction_jax.data.episode import Episode, Word

FDB_SAMPLE_RATE = 16000
INPUT_WAV, OUTPUT_WAV, OUTPUT_JSON = "input.wav", "output.wav", "output.json"
METADATA_JSON, TRANSCRIPTION_JSON = "metadata.json", "transcription.json"
TASK_ANNOTATIONS = {"interruption": "interrupt.json", "turntaking": "turn_taking.json"}
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class FdbError(ValueError):
    """A Full-Duplex-Bench folder that cannot be used (missing/undecodable input, outputs already there)."""


# ---- atomic writes -------------------------------------------------------------------------------
def write_json(path: str, obj) -> str:
    """Writes JSON atomically (temp file in the same folder, then os.replace)."""
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".", suffix=".json.tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=1)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def _copy(src: str, dst: str) -> None:
    """Copies a file atomically (temp file beside `dst`, then os.replace)."""
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(dst)), prefix=".", suffix=".tmp")
    os.close(fd)
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _chunks(words: Sequence[Word], duration: float) -> list[dict]:
    return [{"text": w.text, "timestamp": [round(max(0.0, w.start), 3), round(min(w.end, duration), 3)]}
            for w in words]


def transcript_json(words: Sequence[Word], duration: float) -> dict:
    """FDB's ASR output schema: {"text", "chunks": [{"text", "timestamp": [start_s, end_s]}]}."""
    words = sorted((w for w in words if w.start < duration), key=lambda w: w.start)
    return {"text": " ".join(w.text for w in words), "chunks": _chunks(words, duration)}


# ---- inputs from synthetic episodes --------------------------------------------------------------
def _task_annotation(ep: Episode) -> tuple[str, list] | None:
    md = ep.metadata
    if ep.task == "interruption" and md.get("interruption_onset") is not None:
        onset = float(md["interruption_onset"])
        before = [w for w in ep.user_words if w.start < onset]
        after = [w for w in ep.user_words if w.start >= onset]
        if after:
            return TASK_ANNOTATIONS["interruption"], [{
                "context": " ".join(w.text for w in before), "interrupt": " ".join(w.text for w in after),
                "timestamp": [round(onset, 3), round(after[-1].end, 3)],
            }]  # fmt: skip
    if ep.task == "turntaking" and md.get("question_ends"):
        q_end = float(md["question_ends"][0])
        question = " ".join(w.text for w in ep.user_words if w.end <= q_end + 1e-6)
        nxt = min((w.start for w in ep.user_words if w.start > q_end), default=ep.duration)
        return TASK_ANNOTATIONS["turntaking"], [{"text": question, "timestamp": [round(q_end, 3), round(nxt, 3)]}]
    return None


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return round(float(x), 4)
    if isinstance(x, (np.integer, np.bool_)):
        return x.item()
    return x


def episode_metadata(ep: Episode) -> dict:
    """The `metadata.json` of a sample (see the module docstring)."""
    return _jsonable({
        "episode_id": ep.episode_id, "task": ep.task, "duration": ep.duration, "sample_rate": FDB_SAMPLE_RATE,
        "instruction_mode": ep.metadata.get("instruction_mode"),
        "user_words": _chunks(ep.user_words, ep.duration), "other_words": _chunks(ep.other_words, ep.duration),
        "user_text": [{"time": e.time, "text": e.text} for e in ep.user_text],
        "grading": [{"kind": w.kind, "start": w.start, "end": w.end, "expected": w.expected} for w in ep.grading],
        "metadata": ep.metadata,
    })  # fmt: skip


def _replace_dir(tmp: str, final: str) -> None:
    """Moves a finished temp folder into place (replacing `final` if it exists)."""
    if os.path.exists(final):
        trash = tempfile.mkdtemp(dir=os.path.dirname(final), prefix=".old-")
        os.replace(final, os.path.join(trash, "x"))
        os.replace(tmp, final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(tmp, final)


def write_fdb_inputs(episodes: Sequence[Episode], root: str, *, overwrite: bool = False,
                     skip_typed: bool = True) -> list[str]:
    """One FDB sample folder per episode under `root` (see the module docstring); returns the folders."""
    from interaction_jax.features.audio import ensure_audio, save_wav

    os.makedirs(root, exist_ok=True)
    todo = [ep for ep in episodes if not (skip_typed and ep.user_text)]
    for ep in todo:
        if not _SAFE_ID.match(ep.episode_id):
            raise FdbError(f"fdb: episode id {ep.episode_id!r} is not usable as a folder name")
        if os.path.exists(os.path.join(root, ep.episode_id)) and not overwrite:
            raise FdbError(f"fdb: sample folder {os.path.join(root, ep.episode_id)} exists; pass overwrite=True "
                           "or write to a new root")
    out = []
    for ep in todo:
        final = os.path.join(root, ep.episode_id)
        tmp = tempfile.mkdtemp(dir=root, prefix=f".{ep.episode_id}-")
        try:
            audio = ensure_audio(ep.user_audio, ep.sample_rate, FDB_SAMPLE_RATE, name=ep.episode_id)
            save_wav(os.path.join(tmp, INPUT_WAV), audio, FDB_SAMPLE_RATE)
            write_json(os.path.join(tmp, METADATA_JSON), episode_metadata(ep))
            write_json(os.path.join(tmp, TRANSCRIPTION_JSON), transcript_json(ep.user_words, ep.duration))
            task = _task_annotation(ep)
            if task is not None:
                write_json(os.path.join(tmp, task[0]), _jsonable(task[1]))
            _replace_dir(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        out.append(final)
    skipped = len(episodes) - len(todo)
    print(f"[fdb] wrote {len(out)} sample folders to {root}"
          + (f" (skipped {skipped} with typed messages: FDB input is audio only)" if skipped else ""), flush=True)
    return out


# ---- export --------------------------------------------------------------------------------------
def sample_dirs(input_root: str) -> list[str]:
    """Sample ids under an FDB task folder (every non-hidden sub-folder), sorted."""
    if not os.path.isdir(input_root):
        raise FdbError(f"fdb: input folder {input_root} does not exist")
    names = os.listdir(input_root)
    ids = sorted(n for n in names if not n.startswith(".") and os.path.isdir(os.path.join(input_root, n)))
    if not ids:
        raise FdbError(f"fdb: no sample folders in {input_root} (expected <root>/<sample_id>/{INPUT_WAV})")
    return ids


def load_samples(input_root: str, sample_rate: int) -> dict[str, np.ndarray]:
    """{sample id: mono float32 audio at `sample_rate`}; any problem raises FdbError naming the sample."""
    from interaction_jax.features.audio import AudioError, load_audio

    out = {}
    for sid in sample_dirs(input_root):
        path = os.path.join(input_root, sid, INPUT_WAV)
        if not os.path.isfile(path):
            raise FdbError(f"fdb: sample {sid!r}: no {INPUT_WAV} in {os.path.join(input_root, sid)}")
        try:
            out[sid] = load_audio(path, sample_rate)
        except AudioError as e:
            raise FdbError(f"fdb: sample {sid!r}: {e}") from e
    return out


def output_waveform(run, engine, num_samples: int, n_iter: int | None = None) -> np.ndarray:
    """The run's speech at 16 kHz on the input clock: silence until `mel_start`, then Griffin-Lim, n samples."""
    from interaction_jax.features.audio import ensure_audio
    from interaction_jax.features.mel import mel_to_audio

    params = engine.feature_params
    sr = int(params.sample_rate)
    mel = run.mel if run.mel is not None else np.zeros((0, params.n_mels), np.float32)
    iters = int(n_iter if n_iter is not None else engine.config.inference.griffin_lim_iters)
    speech = mel_to_audio(mel, params, n_iter=iters, length=len(mel) * params.hop_length) if len(mel) else np.zeros(0)
    lead = np.zeros(int(round(run.mel_start * sr)), np.float32)
    wav = np.concatenate([lead, np.asarray(speech, np.float32)])
    if sr != FDB_SAMPLE_RATE and wav.size:
        wav = ensure_audio(wav, sr, FDB_SAMPLE_RATE, name=run.episode_id)
    out = np.zeros(num_samples, np.float32)
    out[: min(num_samples, wav.size)] = wav[:num_samples]
    return out


def export_fdb(engine, input_root: str, output_root: str | None = None, *, seed: int = 0, overwrite: bool = False,
               n_iter: int | None = None, log: bool = True) -> list:
    """Runs every sample of `input_root` through the engine; writes output.wav / output.json per sample.

    `output_root` defaults to `input_root` (outputs beside input.wav, where FDB's scripts look).
    Returns the `EpisodeRun`s in sample order (the words are exactly output.json's chunks).
    """
    from interaction_jax.eval.runner import run_episodes
    from interaction_jax.features.audio import save_wav

    output_root = output_root or input_root
    sr = int(engine.feature_params.sample_rate)
    audio = load_samples(input_root, sr)  # every input is checked before anything runs
    same = os.path.abspath(output_root) == os.path.abspath(input_root)
    if not overwrite:
        existing = [os.path.join(output_root, sid, name) for sid in audio for name in (OUTPUT_WAV, OUTPUT_JSON)
                    if os.path.exists(os.path.join(output_root, sid, name))]
        if existing:
            raise FdbError(f"fdb: {len(existing)} outputs already exist (e.g. {existing[0]}); pass overwrite=True "
                           "or choose a new output folder")
    episodes = [Episode(episode_id=sid, duration=len(a) / sr, sample_rate=sr, user_audio=a, task="fdb")
                for sid, a in audio.items()]
    runs = run_episodes(engine, episodes, seed=seed, log_every=1 if log else 0)
    for ep, run in zip(episodes, runs, strict=True):
        out_dir = os.path.join(output_root, ep.episode_id)
        os.makedirs(out_dir, exist_ok=True)
        if not same:  # FDB's evaluators read the task annotation from the output folder
            src = os.path.join(input_root, ep.episode_id)
            for name in sorted(os.listdir(src)):
                if name.endswith(".json") and name != OUTPUT_JSON:
                    _copy(os.path.join(src, name), os.path.join(out_dir, name))
        n_out = int(round(len(audio[ep.episode_id]) * FDB_SAMPLE_RATE / sr))
        save_wav(os.path.join(out_dir, OUTPUT_WAV), output_waveform(run, engine, n_out, n_iter), FDB_SAMPLE_RATE)
        write_json(os.path.join(out_dir, OUTPUT_JSON), transcript_json(run.words, ep.duration))
    if log:
        print(f"[fdb] wrote {OUTPUT_WAV} + {OUTPUT_JSON} for {len(runs)} samples to {output_root}", flush=True)
    return runs


__all__ = ["FdbError", "export_fdb", "load_samples", "output_waveform", "sample_dirs", "transcript_json",
           "write_fdb_inputs", "write_json"]
