"""Full-Duplex-Bench compatibility: run a checkpoint on FDB task roots, write what its scripts read.

Full-Duplex-Bench (Lin et al. 2025; v1 and v1.5) scores one *task root* at a time
(`--root_dir`): one folder per sample holding `input.wav` (the user's speech stream, 16 kHz),
the task's annotation and the system's `output.wav` (its speech on the input's clock); FDB's ASR
step writes `output.json` (`{"text", "chunks": [{"text": word, "timestamp": [start_s, end_s]}]}`).
Its readers are strict about the root: the turn-taking and pause scripts open every entry of it
as a sample folder, the interruption script walks every sub-folder and needs `interrupt.json` in
each, `get_timing.py` takes the folders with both `input.wav` and `output.wav`, and the
backchannel script takes folders named by an integer and looks that name up in its ground-truth
distribution (ICC samples `0..54`). So every task gets its own root and a root holds only samples
annotated for its task:

  task root (`FDB_TASKS`)   annotation          FDB scripts that score it
  `user_interruption`       `interrupt.json`    `evaluate.py --task user_interruption`, `get_timing.py`
                            (v1.5: `metadata.json`, read as interrupt.json: `read_annotation`)
  `smooth_turn_taking`      `turn_taking.json`  `evaluate.py --task smooth_turn_taking`, `get_timing.py`
  `pause_handling`          `pause.json`        `evaluate.py --task pause_handling`
  `backchannel`             (folders `0..N-1`)  `evaluate.py --task backchannel`
  `talking_to_other`        `metadata.json`     v1.5: `evaluate.py --task behavior` / `general_before_after`,
  `background_speech`       `metadata.json`       `get_timing.py` (these two roots are known by folder name)

`write_fdb_inputs(episodes, root)` lays synthetic episodes out as `root/<task>/<episode id>/`:
interruption episodes with an interruption go to `user_interruption` (`interrupt.json`:
`[{"context", "interrupt", "timestamp": [onset, end of the interruption]}]`), turn-taking episodes
to `smooth_turn_taking` (`turn_taking.json`: `[{"text", "timestamp": [end of the first question,
start of the next user speech]}]`; FDB reads `timestamp[0]`), talking-to-others episodes that keep
their third voices to v1.5's `talking_to_other` and/or `background_speech` (`fdb_v15.overlap_events`:
one sample per kind of third voice they hold). Other episodes have no FDB task and are not
written (nor are episodes with typed messages: FDB input is audio only). Each sample also gets
`transcription.json` in FDB's format (`[{"speaker": 0, "item": [{"text", "timestamp"}]}]`;
speaker 0 = the user, 1 = the other voices mixed into `input.wav`, when there are any) and
`episode.json`, this codebase's own annotation (timings, grading windows, generator metadata).
Where the episode can provide them (`eval/fdb_v15.py`: interruption samples without other
voices, and every talking-to-others sample), v1.5's paired files are written too:
`clean_input.wav` (the input without the overlap event), `clean_input.json`, `input.json` and
v1.5's `metadata.json` (`{context_text, current_turn_text, timestamps}`).

`export_fdb(engine, task_root, output_root)` runs every sample of one task root through live
streaming sessions (`runner.run_episodes`, audio only) and writes per sample, atomically (temp
file + rename), mode 0644 (folders 0755):
  * `output.wav`: mono 16 kHz PCM, the model's speech (Griffin-Lim of its mel output, peak-limited
    by `mel_to_audio`; silence before the first output micro-turn), exactly as long as `input.wav`;
  * `output.json`: the schema above from the model's *own* text stream (seconds from the start of
    the input, ends clipped to its duration), so no ASR step is needed. For `user_interruption` it
    holds only the words that start at or after the end of the interruption (`interrupt.json`
    `timestamp[1]`), as FDB's ASR transcribes only the audio after it (times stay absolute);
  * the sample's other files (`input.wav`, annotations), copied when `output_root` is not the task
    root, so FDB's scripts run on `output_root` alone;
  * for a sample with a `clean_input.wav` (ours or FDB v1.5's), `clean_output.wav` and
    `clean_output.json`: the model run a second time on the clean input (`fdb_v15.export_clean`).
It refuses to overwrite outputs unless `overwrite=True` and checks every sample (audio, task
annotation, backchannel folder names) before compiling anything. `export_fdb_tree` does this for
every task root under a folder (what `evaluate --export_fdb` calls), then times the model's speech
from its audio (`eval/audio_timing.py`: `timing.json` and `output_audio.json` per sample,
`timing_summary.json` beside the task roots). `export_oracle_tree` writes the episodes' targets
the same way (`evaluate --export_fdb --oracle`), a known-good system to score beside the model.
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
from interaction_jax.errors import UserError
from interaction_jax.results_io import write_json

FDB_SAMPLE_RATE = 16000
INPUT_WAV, OUTPUT_WAV, OUTPUT_JSON = "input.wav", "output.wav", "output.json"
EPISODE_JSON, TRANSCRIPTION_JSON = "episode.json", "transcription.json"
FDB_TASKS = {"user_interruption": "interrupt.json", "smooth_turn_taking": "turn_taking.json",
             "pause_handling": "pause.json", "backchannel": None,
             "talking_to_other": "metadata.json", "background_speech": "metadata.json"}
# v1.5 overlap roots: their annotation (metadata.json) is not theirs alone, so only a root's name tells them
NAMED_ONLY = ("talking_to_other", "background_speech")
# FDB v1.5's own user_interruption samples carry metadata.json ({context_text, current_turn_text,
# timestamps: [start, end]}) where v1 has interrupt.json; FDB's interruption script reads either
V15_ANNOTATION = {"user_interruption": "metadata.json"}
# our benchmark task -> the FDB task roots its episodes go to
EPISODE_TASKS = {"interruption": ("user_interruption",), "turntaking": ("smooth_turn_taking",),
                 "others": NAMED_ONLY}
FILE_MODE, DIR_MODE = 0o644, 0o755
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class FdbError(UserError, ValueError):
    """A Full-Duplex-Bench folder that cannot be used (missing/undecodable input, wrong task layout, outputs there)."""


# ---- atomic, readable writes ---------------------------------------------------------------------
def _copy(src: str, dst: str) -> None:
    """Copies a file atomically (temp file beside `dst`, chmod 0644, then os.replace)."""
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(dst)), prefix=".", suffix=".tmp")
    os.close(fd)
    try:
        shutil.copyfile(src, tmp)
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, dst)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _makedirs(path: str) -> None:
    os.makedirs(path, exist_ok=True)
    os.chmod(path, DIR_MODE)


def _chunks(words: Sequence[Word], duration: float) -> list[dict]:
    return [{"text": w.text, "timestamp": [round(max(0.0, w.start), 3), round(min(w.end, duration), 3)]}
            for w in words]


def transcript_json(words: Sequence[Word], duration: float, *, after: float = 0.0) -> dict:
    """FDB's ASR output schema {"text", "chunks": [{"text", "timestamp": [start_s, end_s]}]}.

    Only words starting in [after, duration) are kept (`after` = the end of the interruption for
    FDB's user-interruption task, whose ASR sees only the audio after it).
    """
    words = sorted((w for w in words if after <= w.start < duration), key=lambda w: w.start)
    return {"text": " ".join(w.text for w in words), "chunks": _chunks(words, duration)}


def fdb_transcription(user_words: Sequence[Word], other_words: Sequence[Word], duration: float) -> list[dict]:
    """`transcription.json` as FDB ships it: [{"speaker", "item": [{"text", "timestamp"}]}] (0 = user)."""
    out = [{"speaker": 0, "item": _chunks(sorted(user_words, key=lambda w: w.start), duration)}]
    if other_words:
        out.append({"speaker": 1, "item": _chunks(sorted(other_words, key=lambda w: w.start), duration)})
    return out


# ---- inputs from synthetic episodes --------------------------------------------------------------
def _task_annotations(ep: Episode) -> list[tuple[str, list | dict]]:
    """[(FDB task, its annotation)] for an episode: one per FDB task root it maps onto (none, one or two)."""
    from interaction_jax.eval.fdb_v15 import overlap_events, overlap_metadata

    md = ep.metadata
    if ep.task == "interruption" and md.get("interruption_onset") is not None:
        onset = float(md["interruption_onset"])
        before = [w for w in ep.user_words if w.start < onset]
        after = [w for w in ep.user_words if w.start >= onset]
        if after:
            return [("user_interruption", [{
                "context": " ".join(w.text for w in before), "interrupt": " ".join(w.text for w in after),
                "timestamp": [round(onset, 3), round(after[-1].end, 3)],
            }])]  # fmt: skip
    if ep.task == "turntaking" and md.get("question_ends"):
        q_end = float(md["question_ends"][0])
        question = " ".join(w.text for w in ep.user_words if w.end <= q_end + 1e-6)
        nxt = min((w.start for w in ep.user_words if w.start > q_end), default=ep.duration)
        return [("smooth_turn_taking", [{"text": question, "timestamp": [round(q_end, 3), round(nxt, 3)]}])]
    if ep.task == "others":  # metadata.json is the annotation; only episodes that kept their third voices
        return [(task, overlap_metadata(ep, task)) for task in NAMED_ONLY if task in overlap_events(ep)]
    return []


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
    """The `episode.json` of a sample: this codebase's annotation (see the module docstring)."""
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
    os.chmod(tmp, DIR_MODE)  # mkdtemp makes 0700
    if os.path.exists(final):
        trash = tempfile.mkdtemp(dir=os.path.dirname(final), prefix=".old-")
        os.replace(final, os.path.join(trash, "x"))
        os.replace(tmp, final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(tmp, final)


def write_fdb_inputs(episodes: Sequence[Episode], root: str, *, overwrite: bool = False,
                     skip_typed: bool = True) -> list[str]:
    """`root/<FDB task>/<episode id>/` per episode that maps onto an FDB task; returns the sample folders."""
    from interaction_jax.eval.fdb_v15 import clean_files
    from interaction_jax.features.audio import ensure_audio, save_wav

    todo, written = [], set()
    for ep in episodes:
        for task in [] if (skip_typed and ep.user_text) else _task_annotations(ep):
            if not _SAFE_ID.match(ep.episode_id):
                raise FdbError(f"fdb: episode id {ep.episode_id!r} is not usable as a folder name")
            final = os.path.join(root, task[0], ep.episode_id)
            if os.path.exists(final) and not overwrite:
                raise FdbError(f"fdb: sample folder {final} exists; pass overwrite=True or write to a new root")
            todo.append((ep, task, final))
            written.add(id(ep))
    out = []
    for ep, (task, annotation), final in todo:
        task_root = os.path.dirname(final)
        _makedirs(root)
        _makedirs(task_root)
        tmp = tempfile.mkdtemp(dir=task_root, prefix=f".{ep.episode_id}-")
        try:
            audio = ensure_audio(ep.user_audio, ep.sample_rate, FDB_SAMPLE_RATE, name=ep.episode_id)
            save_wav(os.path.join(tmp, INPUT_WAV), audio, FDB_SAMPLE_RATE)
            write_json(os.path.join(tmp, EPISODE_JSON), episode_metadata(ep))
            write_json(os.path.join(tmp, TRANSCRIPTION_JSON), fdb_transcription(ep.user_words, ep.other_words,
                                                                                ep.duration))
            write_json(os.path.join(tmp, FDB_TASKS[task]), _jsonable(annotation))
            for name, obj in (clean_files(ep, task, annotation, audio, FDB_SAMPLE_RATE) or {}).items():
                if name.endswith(".wav"):
                    save_wav(os.path.join(tmp, name), obj, FDB_SAMPLE_RATE)
                else:
                    write_json(os.path.join(tmp, name), _jsonable(obj))
            _replace_dir(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        out.append(final)
    skipped = len(episodes) - len(written)
    print(f"[fdb] wrote {len(out)} sample folders under {root}"
          + (f" (skipped {skipped}: typed messages, or no FDB task annotation)" if skipped else ""), flush=True)
    return out


# ---- export --------------------------------------------------------------------------------------
def sample_dirs(input_root: str) -> list[str]:
    """Sample ids under an FDB task root (every non-hidden sub-folder), sorted."""
    if not os.path.isdir(input_root):
        raise FdbError(f"fdb: input folder {input_root} does not exist")
    names = os.listdir(input_root)
    ids = sorted(n for n in names if not n.startswith(".") and os.path.isdir(os.path.join(input_root, n)))
    if not ids:
        raise FdbError(f"fdb: no sample folders in {input_root} (expected <root>/<sample_id>/{INPUT_WAV})")
    return ids


def detect_task(input_root: str, ids: Sequence[str] | None = None) -> str:
    """The FDB task of a root: its folder name if that is a task name, else the annotation its samples share.

    Every sample must carry the task's annotation (FDB's scripts fail or misscore otherwise), and
    backchannel folders must be named 0..N-1 (FDB's ground truth is indexed by folder name).
    """
    ids = list(ids) if ids is not None else sample_dirs(input_root)
    has = {t: [s for s in ids if os.path.isfile(os.path.join(input_root, s, a))]
           for t, a in FDB_TASKS.items() if a}
    name = os.path.basename(os.path.normpath(input_root))
    if name in FDB_TASKS:
        task = name
    else:
        full = [t for t, s in has.items() if len(s) == len(ids) and t not in NAMED_ONLY]
        if len(full) == 1:
            task = full[0]
        elif not any(has.values()) and all(s.isdigit() for s in ids):
            task = "backchannel"
        else:
            found = ", ".join(f"{FDB_TASKS[t]} in {len(s)}" for t, s in has.items()
                              if s and t not in NAMED_ONLY[1:]) or "no annotation"
            raise FdbError(f"fdb: {input_root} is not one FDB task root ({len(ids)} samples; {found}); "
                           f"name it after its task ({', '.join(FDB_TASKS)}) or give one root per task")
    ann = FDB_TASKS[task]
    if ann:
        alt = V15_ANNOTATION.get(task) if name == task else None  # only a named root says metadata.json is its own
        missing = [s for s in ids if s not in has[task]
                   and not (alt and os.path.isfile(os.path.join(input_root, s, alt)))]
        if missing:
            also = f" (or FDB v1.5's {alt})" if alt else ""
            raise FdbError(f"fdb: {len(missing)} samples of the {task} root {input_root} have no {ann}{also} "
                           f"(e.g. {missing[0]!r}); a task root holds only samples annotated for it")
    else:
        bad = sorted(set(ids) - {str(i) for i in range(len(ids))})
        if bad:
            raise FdbError(f"fdb: backchannel sample folders must be named 0..{len(ids) - 1} (FDB looks each "
                           f"name up in icc_gt_distribution.json); got {bad[0]!r}")
    return task


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
    from interaction_jax.features.audio import ensure_audio, on_input_clock
    from interaction_jax.features.mel import mel_to_audio

    params = engine.feature_params
    sr = int(params.sample_rate)
    mel = run.mel if run.mel is not None else np.zeros((0, params.n_mels), np.float32)
    iters = int(n_iter if n_iter is not None else engine.config.inference.griffin_lim_iters)
    speech = mel_to_audio(mel, params, n_iter=iters, length=len(mel) * params.hop_length) if len(mel) else np.zeros(0)
    wav = on_input_clock(speech, run.mel_start, sr, int(round(num_samples * sr / FDB_SAMPLE_RATE)))
    if sr != FDB_SAMPLE_RATE and wav.size:
        wav = ensure_audio(wav, sr, FDB_SAMPLE_RATE, name=run.episode_id)
    out = np.zeros(num_samples, np.float32)
    out[: min(num_samples, wav.size)] = wav[:num_samples]
    return out


def read_annotation(sample_dir: str, task: str) -> list[dict] | None:
    """A sample's FDB annotation in v1's form (`[{..., "timestamp": [start, end]}]`), None where the task has none.

    A v1.5 `user_interruption` sample's `metadata.json` is read as v1's `interrupt.json`
    (`context_text` -> `context`, `current_turn_text` -> `interrupt`, `timestamps` -> `timestamp`),
    as FDB's interruption script does. v1.5's other roots (one dict of metadata, no turn to time
    against) give None.
    """
    name = FDB_TASKS.get(task)
    if not name:
        return None
    path = os.path.join(sample_dir, name)
    alt = V15_ANNOTATION.get(task)
    if alt and not os.path.isfile(path) and os.path.isfile(os.path.join(sample_dir, alt)):
        path = os.path.join(sample_dir, alt)
        try:
            with open(path) as f:
                meta = json.load(f)
            start, end = (float(t) for t in meta["timestamps"][:2])
            return [{"context": meta.get("context_text", ""), "interrupt": meta.get("current_turn_text", ""),
                     "timestamp": [start, end]}]
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise FdbError(f"fdb: {path}: expected FDB v1.5 metadata {{\"timestamps\": [start, end], ...}} "
                           f"({type(e).__name__}: {e})") from e
    try:
        with open(path) as f:
            ann = json.load(f)
    except (OSError, ValueError) as e:
        raise FdbError(f"fdb: {path}: not readable JSON ({e})") from e
    return ann if isinstance(ann, list) else None


def _interrupt_end(sample_dir: str) -> float:
    """The interruption's end (v1 `interrupt.json` or v1.5 `metadata.json`): FDB transcribes the output from here on."""
    ann = read_annotation(sample_dir, "user_interruption")
    try:
        return float(ann[0]["timestamp"][1])
    except (KeyError, IndexError, TypeError, ValueError) as e:
        raise FdbError(f"fdb: {sample_dir}: expected interrupt.json [{{\"timestamp\": [start, end], ...}}] "
                       f"({type(e).__name__}: {e})") from e


def export_fdb(engine, input_root: str, output_root: str | None = None, *, task: str | None = None, seed: int = 0,
               overwrite: bool = False, n_iter: int | None = None, log: bool = True) -> list:
    """Runs every sample of one FDB task root through the engine; writes output.wav / output.json per sample.

    `output_root` defaults to `input_root` (outputs beside input.wav). `task` defaults to
    `detect_task(input_root)`. Returns the `EpisodeRun`s in sample order (all of each run's words;
    output.json may keep fewer, see the module docstring).
    """
    from interaction_jax.eval.fdb_v15 import CLEAN_OUTPUTS, export_clean, load_clean
    from interaction_jax.eval.runner import run_episodes
    from interaction_jax.features.audio import save_wav

    outputs = (OUTPUT_WAV, OUTPUT_JSON, *CLEAN_OUTPUTS)
    output_root = output_root or input_root
    sr = int(engine.feature_params.sample_rate)
    ids = sample_dirs(input_root)
    task = task or detect_task(input_root, ids)
    if task not in FDB_TASKS:
        raise FdbError(f"fdb: unknown task {task!r}; known: {', '.join(FDB_TASKS)}")
    audio = load_samples(input_root, sr)  # every input is checked before anything runs
    clean = load_clean(input_root, ids, sr)
    after = {sid: _interrupt_end(os.path.join(input_root, sid)) if task == "user_interruption" else 0.0
             for sid in ids}
    same = os.path.abspath(output_root) == os.path.abspath(input_root)
    if not overwrite:
        existing = [os.path.join(output_root, sid, name) for sid in audio for name in outputs
                    if os.path.exists(os.path.join(output_root, sid, name))]
        if existing:
            raise FdbError(f"fdb: {len(existing)} outputs already exist (e.g. {existing[0]}); pass overwrite=True "
                           "or choose a new output folder")
    episodes = [Episode(episode_id=sid, duration=len(a) / sr, sample_rate=sr, user_audio=a, task="fdb")
                for sid, a in audio.items()]
    runs = run_episodes(engine, episodes, seed=seed, log_every=1 if log else 0)
    _makedirs(output_root)
    for ep, run in zip(episodes, runs, strict=True):
        out_dir = os.path.join(output_root, ep.episode_id)
        _makedirs(out_dir)
        src = os.path.join(input_root, ep.episode_id)
        if not same:  # FDB's scripts read input.wav and the annotation beside the outputs
            for name in sorted(os.listdir(src)):
                if name not in outputs and os.path.isfile(os.path.join(src, name)):
                    _copy(os.path.join(src, name), os.path.join(out_dir, name))
        n_out = int(_output_frames(os.path.join(src, INPUT_WAV), len(audio[ep.episode_id]), sr))
        save_wav(os.path.join(out_dir, OUTPUT_WAV), output_waveform(run, engine, n_out, n_iter), FDB_SAMPLE_RATE)
        write_json(os.path.join(out_dir, OUTPUT_JSON), transcript_json(run.words, ep.duration,
                                                                       after=after[ep.episode_id]))
    if log:
        print(f"[fdb] {task}: wrote {OUTPUT_WAV} + {OUTPUT_JSON} for {len(runs)} samples to {output_root}",
              flush=True)
    export_clean(engine, clean, input_root, output_root, seed=seed, n_iter=n_iter, log=log)
    return runs


def _output_frames(path: str, n_model: int, model_sr: int) -> int:
    """Samples of `output.wav`: input.wav's own count when it is 16 kHz, else the input's length at 16 kHz."""
    import soundfile as sf

    info = sf.info(path)
    if int(info.samplerate) == FDB_SAMPLE_RATE:
        return int(info.frames)
    return int(round(n_model * FDB_SAMPLE_RATE / model_sr))


def task_roots(root: str) -> list[str]:
    """The FDB task roots in `root`: `root` itself when its samples hold input.wav, else its sub-folders that do."""
    def is_task_root(d: str) -> bool:
        try:
            return any(os.path.isfile(os.path.join(d, s, INPUT_WAV)) for s in sample_dirs(d))
        except FdbError:
            return False

    if is_task_root(root):
        return [root]
    subs = [os.path.join(root, n) for n in sorted(os.listdir(root))] if os.path.isdir(root) else []
    found = [d for d in subs if not os.path.basename(d).startswith(".") and os.path.isdir(d) and is_task_root(d)]
    if not found:
        raise FdbError(f"fdb: no FDB task root in {root} (expected <root>/<sample>/{INPUT_WAV} or "
                       f"<root>/<task>/<sample>/{INPUT_WAV})")
    return found


def export_fdb_tree(engine, out_root: str, *, input_root: str | None = None,
                    episodes: Sequence[Episode] | None = None, seed: int = 0, overwrite: bool = False,
                    n_iter: int | None = None, timing: bool = True) -> dict[str, list]:
    """Every task root scored into `out_root/<root name>/` (self-contained: inputs copied beside outputs).

    With `episodes`, they are first written as task roots straight into `out_root`
    (`write_fdb_inputs`) and exported in place; with `input_root` (one FDB task root, or a folder
    of them, e.g. FDB's `v1_0/`), each root is exported to `out_root/<its folder name>`. With
    `timing`, every exported root is then timed from its audio (`audio_timing.write_timing`, the
    runs giving the text column all of their words). Returns {root name: runs}.
    """
    if (input_root is None) == (episodes is None):
        raise FdbError("fdb: pass exactly one of input_root or episodes")
    if episodes is not None:
        write_fdb_inputs(episodes, out_root, overwrite=overwrite)
        roots = [(d, d) for d in task_roots(out_root)]
    else:
        roots = [(d, os.path.join(out_root, os.path.basename(os.path.normpath(d)))) for d in task_roots(input_root)]
    for src, _ in roots:  # every root is checked before the first one runs
        detect_task(src)
    runs = {os.path.basename(dst): export_fdb(engine, src, dst, seed=seed, overwrite=overwrite, n_iter=n_iter)
            for src, dst in roots}
    if timing:
        from interaction_jax.eval.audio_timing import write_timing

        write_timing(out_root, runs, roots=[dst for _, dst in roots])
    return runs


def export_oracle_tree(episodes: Sequence[Episode], out_root: str, *, config=None, overwrite: bool = False,
                       timing: bool = True) -> dict[str, list]:
    """The episodes' own target behaviour written as an FDB export: a known-good system for FDB's scripts.

    Laid out as `export_fdb_tree(episodes=...)`; per sample `output.wav` is the target recording
    (`model_audio` at 16 kHz, as long as `input.wav`) and `output.json` the target words after the
    packing a model's text stream goes through (`grading.ground_truth_run`, what `evaluate --oracle`
    grades), cropped after the interruption as for a model. No `clean_output.*`: the targets have
    no run on the clean input. Returns {root name: runs}.
    """
    from interaction_jax.eval.grading import ground_truth_run
    from interaction_jax.features.audio import ensure_audio, save_wav

    by_id = {ep.episode_id: ep for ep in episodes}
    write_fdb_inputs(episodes, out_root, overwrite=overwrite)
    runs: dict[str, list] = {}
    for root in task_roots(out_root):
        task = detect_task(root)
        for sid in sample_dirs(root):
            ep, d = by_id[sid], os.path.join(root, sid)
            n = _output_frames(os.path.join(d, INPUT_WAV), ep.num_samples, ep.sample_rate)
            wav = np.zeros(n, np.float32)
            target = ensure_audio(ep.model_audio, ep.sample_rate, FDB_SAMPLE_RATE, name=sid)
            wav[: min(n, target.size)] = target[:n]
            save_wav(os.path.join(d, OUTPUT_WAV), wav, FDB_SAMPLE_RATE)
            run = ground_truth_run(ep, config=config)
            after = _interrupt_end(d) if task == "user_interruption" else 0.0
            write_json(os.path.join(d, OUTPUT_JSON), transcript_json(run.words, ep.duration, after=after))
            runs.setdefault(os.path.basename(root), []).append(run)
    print(f"[fdb] oracle (targets): wrote {OUTPUT_WAV} + {OUTPUT_JSON} under {out_root}", flush=True)
    if timing:
        from interaction_jax.eval.audio_timing import write_timing

        write_timing(out_root, runs)
    return runs


__all__ = ["FDB_TASKS", "V15_ANNOTATION", "FdbError", "detect_task", "export_fdb", "export_fdb_tree",
           "export_oracle_tree", "fdb_transcription", "load_samples", "output_waveform", "read_annotation",
           "sample_dirs", "task_roots", "transcript_json", "write_fdb_inputs", "write_json"]
