"""Full-Duplex-Bench v1.5's paired files: the input without its overlap event and the model's answer to it.

v1.5 scores how a model's behaviour changes when an overlap event (an interruption, a
backchannel, a side conversation, background speech) is added to the user's audio: its
`eval_behavior.py` compares `input.json` / `output.json` with `clean_input.json` /
`clean_output.json`, and `eval_general_before_after.py` reads `clean_output.wav` beside
`output.wav` and the event window from `metadata.json`. Per sample folder, as v1.5 names them:

  clean_input.wav     the input without the overlap event (v1.5: "non-overlap reference")
  clean_input.json    its transcript, FDB's ASR schema {"text", "chunks"}
  input.json          the transcript of input.wav (every voice in it)
  metadata.json       {"context_text", "current_turn_text", "timestamps": [event start, end]}
  clean_output.wav    the model's speech in answer to clean_input.wav (16 kHz, as long as it)
  clean_output.json   its words (the whole transcript, as v1.5's ASR step writes it)

An episode provides the first four (`clean_files`) when its overlap event can be removed
exactly:
  * a `user_interruption` sample whose input holds no other voice: the interruption is every
    user word from the onset on, so `clean_input.wav` is `input.wav` silent from the onset to
    its end (v1.5's interruption reference is the context followed by silence);
  * a `talking_to_other` / `background_speech` sample from an `others` episode
    (`overlap_events`): its third voices were rendered apart and kept (`Episode.other_audio`),
    so `clean_input.wav` is `input.wav` minus the event's voices, the user and the noise floor
    sample for sample as they are in `input.wav`. The event is the other person talking to
    the user or answering them (segments `side_talk`, `address_other`) or the background
    speech (`background`), every such segment of the episode (an episode of both kinds gives
    one sample to each root, the other kind left in both inputs); the user's own words to the
    other person stay in both inputs. `timestamps` span the event's words.
Other samples get none (a recorded mix of the user with other voices cannot be unmixed). The export
(`load_clean`, `export_clean`) writes the last two for every sample that has a `clean_input.wav`, from
episodes or from FDB's own v1.5 folders.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from interaction_jax.data.episode import Episode, Word

CLEAN_INPUT_WAV, CLEAN_INPUT_JSON = "clean_input.wav", "clean_input.json"
CLEAN_OUTPUT_WAV, CLEAN_OUTPUT_JSON = "clean_output.wav", "clean_output.json"
INPUT_JSON, METADATA_JSON = "input.json", "metadata.json"
CLEAN_OUTPUTS = (CLEAN_OUTPUT_WAV, CLEAN_OUTPUT_JSON)
# the v1.5 root of each `others` segment kind whose third voice is its overlap event (data/tasks/others.py)
OVERLAP_TASKS = {"side_talk": "talking_to_other", "address_other": "talking_to_other",
                 "background": "background_speech"}


def overlap_events(ep: Episode) -> dict[str, tuple[list[tuple[float, float]], list[Word]]]:
    """{v1.5 task: (its segments' spans [start, next segment's start), the third-voice words in them)}.

    Only for an `others` episode that keeps its third voices (`other_audio`); segment k starts
    at the k-th `silent` window (the task writes one per segment, in order). A task is listed
    only when its segments hold third-voice words.
    """
    kinds = list(ep.metadata.get("segments", []))
    starts = [g.start for g in ep.grading if g.kind == "silent"]
    if ep.task != "others" or not ep.other_audio.size or not kinds or len(starts) != len(kinds):
        return {}
    out: dict[str, tuple[list, list]] = {}
    for kind, a, b in zip(kinds, starts, [*starts[1:], ep.duration], strict=True):
        words = [w for w in ep.other_words if a <= w.start < b]
        if words and kind in OVERLAP_TASKS:
            spans, event = out.setdefault(OVERLAP_TASKS[kind], ([], []))
            spans.append((a, b))
            event += words
    return out


def overlap_metadata(ep: Episode, task: str) -> dict | None:
    """v1.5's metadata.json of an `others` sample (`overlap_events`): the user's words before / from the event on."""
    event = overlap_events(ep).get(task)
    if event is None:
        return None
    start, end = min(w.start for w in event[1]), max(w.end for w in event[1])
    return {"context_text": " ".join(w.text for w in ep.user_words if w.start < start),
            "current_turn_text": " ".join(w.text for w in ep.user_words if w.start >= start),
            "timestamps": [round(start, 3), round(end, 3)]}


def _without_event(ep: Episode, task: str, sample_rate: int) -> np.ndarray | None:
    """The episode's user channel minus the event's third voices, at `sample_rate` (as input.wav is written)."""
    from interaction_jax.features.audio import ensure_audio

    spans = overlap_events(ep)[task][0]
    sr = ep.sample_rate
    removed = np.zeros_like(ep.user_audio)
    for a, b in spans:
        i0, i1 = int(round(a * sr)), int(round(b * sr))
        removed[i0:i1] = ep.other_audio[i0:i1]
    return ensure_audio(ep.user_audio - removed, sr, sample_rate, name=ep.episode_id)


def clean_files(ep: Episode, task: str, annotation: Sequence[dict], audio: np.ndarray,
                sample_rate: int) -> dict | None:
    """{name: wav array or JSON object} of v1.5's input-side files for one sample, or None (module docstring).

    `audio` is the sample's `input.wav` at `sample_rate`.
    """
    from interaction_jax.eval.fdb import transcript_json

    metadata = overlap_metadata(ep, task) if task in OVERLAP_TASKS.values() else None
    if metadata is not None:
        event = set(overlap_events(ep)[task][1])
        return {
            CLEAN_INPUT_WAV: _without_event(ep, task, sample_rate),
            CLEAN_INPUT_JSON: transcript_json([*ep.user_words, *(w for w in ep.other_words if w not in event)],
                                              ep.duration),
            INPUT_JSON: transcript_json([*ep.user_words, *ep.other_words], ep.duration),
            METADATA_JSON: metadata,
        }
    if task != "user_interruption" or ep.other_words:
        return None
    onset, end = (float(x) for x in annotation[0]["timestamp"])
    onset = float(ep.metadata.get("interruption_onset", onset))  # exact (the annotation is rounded to 1 ms)
    clean = np.array(audio, np.float32, copy=True)
    clean[int(round(onset * sample_rate)):] = 0.0
    kept: list[Word] = [w for w in ep.user_words if w.start < onset]
    return {
        CLEAN_INPUT_WAV: clean,
        CLEAN_INPUT_JSON: transcript_json(kept, ep.duration),
        INPUT_JSON: transcript_json([*ep.user_words, *ep.other_words], ep.duration),
        METADATA_JSON: {"context_text": annotation[0]["context"], "current_turn_text": annotation[0]["interrupt"],
                        "timestamps": [round(onset, 3), round(end, 3)]},
    }


def load_clean(input_root: str, ids: Sequence[str], sample_rate: int) -> dict[str, np.ndarray]:
    """{sample id: its clean_input.wav at `sample_rate`} for the samples that have one (checked before any run)."""
    from interaction_jax.eval.fdb import FdbError
    from interaction_jax.features.audio import AudioError, load_audio

    out = {}
    for sid in ids:
        path = os.path.join(input_root, sid, CLEAN_INPUT_WAV)
        if os.path.isfile(path):
            try:
                out[sid] = load_audio(path, sample_rate)
            except AudioError as e:
                raise FdbError(f"fdb: sample {sid!r}: {e}") from e
    return out


def export_clean(engine, clean: dict[str, np.ndarray], input_root: str, output_root: str, *, seed: int = 0,
                 n_iter: int | None = None, log: bool = True) -> dict[str, object]:
    """Runs each clean input (`load_clean`) and writes clean_output.wav / .json beside the sample's outputs.

    Sessions get seeds `seed + index` over the clean samples in order (the same seeds as their
    `input.wav` runs when every sample has a clean input). Returns {sample id: run}.
    """
    from interaction_jax.eval.fdb import (
        FDB_SAMPLE_RATE,
        _makedirs,
        _output_frames,
        output_waveform,
        transcript_json,
        write_json,
    )
    from interaction_jax.eval.runner import run_episodes
    from interaction_jax.features.audio import save_wav

    if not clean:
        return {}
    sr = int(engine.feature_params.sample_rate)
    episodes = [Episode(episode_id=sid, duration=len(a) / sr, sample_rate=sr, user_audio=a, task="fdb")
                for sid, a in clean.items()]
    runs = run_episodes(engine, episodes, seed=seed, log_every=1 if log else 0)
    for ep, run in zip(episodes, runs, strict=True):
        out_dir = os.path.join(output_root, ep.episode_id)
        _makedirs(out_dir)
        n_out = _output_frames(os.path.join(input_root, ep.episode_id, CLEAN_INPUT_WAV), len(clean[ep.episode_id]), sr)
        save_wav(os.path.join(out_dir, CLEAN_OUTPUT_WAV), output_waveform(run, engine, n_out, n_iter), FDB_SAMPLE_RATE)
        write_json(os.path.join(out_dir, CLEAN_OUTPUT_JSON), transcript_json(run.words, ep.duration))
    if log:
        print(f"[fdb] wrote {CLEAN_OUTPUT_WAV} + {CLEAN_OUTPUT_JSON} for {len(runs)} clean inputs to {output_root}",
              flush=True)
    return {ep.episode_id: run for ep, run in zip(episodes, runs, strict=True)}


__all__ = ["CLEAN_INPUT_JSON", "CLEAN_INPUT_WAV", "CLEAN_OUTPUTS", "CLEAN_OUTPUT_JSON", "CLEAN_OUTPUT_WAV",
           "INPUT_JSON", "METADATA_JSON", "OVERLAP_TASKS", "clean_files", "export_clean", "load_clean",
           "overlap_events", "overlap_metadata"]
