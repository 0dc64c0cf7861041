"""An FDB export as a speech corpus other tools read: one mono recording per sample, RTTM, STM, CTM, a manifest.

Diarization scorers (dscore, pyannote), ASR scorers (sclite, meeteval) and call-centre or meeting
pipelines expect one recording of both parties with speaker turns and timed transcripts beside
it, not FDB's two files per sample. `write_corpus(export, out)` turns every sample of an
`--export_fdb` folder (or one task root) into:

  out/audio/<file>.wav   mono 16 kHz PCM: input.wav (the user and any other voices) + output.wav
                         (the model), summed, scaled down only if the sum would peak over 0.9
  out/rttm/<file>.rttm   `SPEAKER <file> 1 <start> <dur> <NA> <NA> <spk> <NA> <NA>`, one line a turn
  out/stm/<file>.stm     `<file> 1 <spk> <start> <end> <transcript>`, one line an utterance
  out/ctm/<file>.ctm     `<file> 1 <start> <dur> <word>`, one line a word (all speakers, time order)
  out/all.rttm, all.stm, all.ctm   the same lines for the whole corpus (what scorers take)
  out/manifest.jsonl     one line per file: {"id", "audio", "channels": 1, "sample_rate",
                         "duration", "rttm", "stm", "ctm", "task", "sample", "source",
                         "model_words", "words": [{"speaker", "text", "start", "end"}]}
                         (relative paths; "words" in the corpus reader's word schema)

`<file>` is `<task root>-<sample>`; channel is 1 (mono); times are seconds with 3 decimals; a
word's spaces become `_` (CTM words are single tokens). Speakers are `user`, `model`, `other`:

  user, other  the episode's own word times (`episode.json` user_words / other_words; for FDB's
               own samples `transcription.json`, speaker 0 = user, others = other; with neither,
               user turns are the VAD's speech in input.wav and have no words). Utterances (STM
               lines, RTTM turns) are words grouped while the gap to the next is under
               `turn_gap_s` (0.5 s).
  model        with `model_words="audio"` (default) the turns are the VAD's speech segments of
               output.wav (`eval/audio_timing.py`) and the words are the text stream's words
               re-timed onto them (`timing.json` words_audio; computed if the sample has no
               timing.json); a segment without words is an RTTM turn with no STM line. With
               `"text"`, the text stream's own word times, grouped like the user's.

Overlap is kept as it happened: turns of different speakers may overlap in RTTM (the mix holds
both), and STM/CTM lines are sorted by start time regardless of speaker.

    python -m interaction_jax.eval.corpus_formats --export=OUT --out=CORPUS [--model_words=text]
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Sequence

import numpy as np

from interaction_jax.data.episode import Word

SAMPLE_RATE = 16000
CHANNEL = "1"
TURN_GAP_S = 0.5
SPEAKERS = ("user", "model", "other")
MANIFEST = "manifest.jsonl"
Utterance = tuple[str, float, float, list[Word]]  # speaker, start, end, words


def _write_text(path: str, text: str) -> None:
    """Atomic write (temp file, chmod 0644, rename), like the FDB export."""
    from interaction_jax.eval.fdb import FILE_MODE

    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _t(x: float) -> str:
    return f"{x:.3f}"


def _token(text: str) -> str:
    return re.sub(r"\s+", "_", text.strip())


def group_words(speaker: str, words: Sequence[Word], gap_s: float = TURN_GAP_S) -> list[Utterance]:
    """Utterances of one speaker: time-ordered words split where the gap to the next is >= `gap_s`."""
    out: list[Utterance] = []
    for w in sorted(words, key=lambda w: w.start):
        if out and w.start - out[-1][2] < gap_s:
            out[-1] = (speaker, out[-1][1], max(out[-1][2], w.end), out[-1][3] + [w])
        else:
            out.append((speaker, w.start, w.end, [w]))
    return out


def rttm_lines(file_id: str, turns: Sequence[Utterance]) -> list[str]:
    """RTTM SPEAKER lines (type, file, channel, onset, duration, <NA> <NA>, speaker, <NA> <NA>); empty turns skipped."""
    return [f"SPEAKER {file_id} {CHANNEL} {_t(a)} {_t(b - a)} <NA> <NA> {spk} <NA> <NA>"
            for spk, a, b, _ in sorted(turns, key=lambda u: (u[1], u[0])) if round(b - a, 3) > 0]


def stm_lines(file_id: str, utterances: Sequence[Utterance]) -> list[str]:
    """STM lines (file, channel, speaker, start, end, transcript) for utterances with words, by start time."""
    return [f"{file_id} {CHANNEL} {spk} {_t(a)} {_t(b)} " + " ".join(t for t in (_token(w.text) for w in ws) if t)
            for spk, a, b, ws in sorted(utterances, key=lambda u: (u[1], u[0])) if any(_token(w.text) for w in ws)]


def ctm_lines(file_id: str, words: Sequence[Word]) -> list[str]:
    """CTM lines (file, channel, start, duration, word) by start time; words with no text skipped."""
    return [f"{file_id} {CHANNEL} {_t(w.start)} {_t(max(0.0, w.end - w.start))} {_token(w.text)}"
            for w in sorted(words, key=lambda w: (w.start, w.end)) if _token(w.text)]


def _chunk_words(items) -> list[Word]:
    return [Word(str(c["text"]), float(c["timestamp"][0]), float(c["timestamp"][1])) for c in items or []
            if c.get("timestamp") and c["timestamp"][0] is not None and c["timestamp"][1] is not None]


def _read_json(path: str):
    with open(path) as f:
        return json.load(f)


def input_words(sample_dir: str) -> dict[str, list[Word]] | None:
    """{"user": [...], "other": [...]} from episode.json, else transcription.json; None when neither exists."""
    ep = os.path.join(sample_dir, "episode.json")
    if os.path.isfile(ep):
        md = _read_json(ep)
        if "user_words" in md or "other_words" in md:
            return {"user": _chunk_words(md.get("user_words")), "other": _chunk_words(md.get("other_words"))}
    tr = os.path.join(sample_dir, "transcription.json")
    if os.path.isfile(tr):
        out: dict[str, list[Word]] = {"user": [], "other": []}
        for spk in _read_json(tr):
            out["user" if spk.get("speaker") == 0 else "other"] += _chunk_words(spk.get("item"))
        return out
    return None


def sample_corpus(sample_dir: str, task: str, *, model_words: str = "audio",
                  turn_gap_s: float = TURN_GAP_S) -> dict:
    """One sample's mono mix, turns, utterances and words: {"mix", "turns", "utterances", "words"}."""
    from interaction_jax.eval import audio_timing
    from interaction_jax.features.audio import PEAK_LEVEL, load_audio

    if model_words not in ("audio", "text"):
        raise ValueError(f"corpus_formats: model_words={model_words!r}; expected audio or text")
    tpath = os.path.join(sample_dir, audio_timing.TIMING_JSON)
    timing = _read_json(tpath) if os.path.isfile(tpath) else audio_timing.sample_timing(sample_dir, task)
    inp = load_audio(os.path.join(sample_dir, "input.wav"), SAMPLE_RATE)
    out = load_audio(os.path.join(sample_dir, "output.wav"), SAMPLE_RATE)
    mix = np.zeros(max(inp.size, out.size), np.float32)
    mix[: inp.size] += inp
    mix[: out.size] += out
    peak = float(np.max(np.abs(mix))) if mix.size else 0.0
    if peak > PEAK_LEVEL:
        mix *= PEAK_LEVEL / peak

    words = input_words(sample_dir)
    utterances: list[Utterance] = []
    turns: list[Utterance] = []
    if words is None:
        turns += [("user", a, b, []) for a, b in timing["input_speech"]]
        words = {"user": [], "other": []}
    for spk in ("user", "other"):
        u = group_words(spk, words[spk], turn_gap_s)
        utterances += u
        turns += u
    if model_words == "audio":
        mw = _chunk_words(timing["words_audio"])
        for a, b in timing["output_speech"]:
            inside = [w for w in mw if a - 1e-6 <= w.start < b]
            turns.append(("model", a, b, inside))
            if inside:
                utterances.append(("model", a, b, inside))
    else:
        mw = _chunk_words(timing["words_text"])
        u = group_words("model", mw, turn_gap_s)
        utterances += u
        turns += u
    all_words = [("user", w) for w in words["user"]] + [("other", w) for w in words["other"]] + [("model", w)
                                                                                                 for w in mw]
    return {"mix": mix, "duration": mix.size / SAMPLE_RATE, "turns": turns, "utterances": utterances,
            "words": sorted(all_words, key=lambda sw: (sw[1].start, sw[1].end))}


def write_corpus(export_root: str, out: str, *, model_words: str = "audio", turn_gap_s: float = TURN_GAP_S,
                 overwrite: bool = False) -> list[dict]:
    """Every sample of an FDB export (a tree of task roots or one root) as a corpus in `out` (module docstring).

    Returns the manifest entries. An existing non-empty `out` is refused unless `overwrite`
    (then replaced as a whole).
    """
    from interaction_jax.eval.fdb import DIR_MODE, FdbError, detect_task, sample_dirs, task_roots
    from interaction_jax.features.audio import save_wav

    if os.path.isdir(out) and os.listdir(out):
        if not overwrite:
            raise FdbError(f"corpus_formats: {out} exists and is not empty; pass overwrite=True or a new folder")
        shutil.rmtree(out)
    roots = task_roots(export_root)
    tasks = {r: detect_task(r) for r in roots}  # every root checked before anything is written
    for sub in ("", "audio", "rttm", "stm", "ctm"):
        os.makedirs(os.path.join(out, sub), exist_ok=True)
        os.chmod(os.path.join(out, sub), DIR_MODE)
    manifest, all_lines = [], {"rttm": [], "stm": [], "ctm": []}
    for root in roots:
        name = os.path.basename(os.path.normpath(root))
        for sid in sample_dirs(root):
            fid = f"{name}-{sid}"
            c = sample_corpus(os.path.join(root, sid), tasks[root], model_words=model_words, turn_gap_s=turn_gap_s)
            save_wav(os.path.join(out, "audio", f"{fid}.wav"), c["mix"], SAMPLE_RATE)
            lines = {"rttm": rttm_lines(fid, c["turns"]), "stm": stm_lines(fid, c["utterances"]),
                     "ctm": ctm_lines(fid, [w for _, w in c["words"]])}
            for kind, ls in lines.items():
                _write_text(os.path.join(out, kind, f"{fid}.{kind}"), "".join(x + "\n" for x in ls))
                all_lines[kind] += ls
            manifest.append({
                "id": fid, "audio": f"audio/{fid}.wav", "channels": 1, "sample_rate": SAMPLE_RATE,
                "duration": round(c["duration"], 4), "rttm": f"rttm/{fid}.rttm", "stm": f"stm/{fid}.stm",
                "ctm": f"ctm/{fid}.ctm", "task": tasks[root], "sample": sid, "source": os.path.abspath(
                    os.path.join(root, sid)), "model_words": model_words,
                "words": [{"speaker": s, "text": w.text, "start": round(w.start, 4), "end": round(w.end, 4)}
                          for s, w in c["words"]],
            })  # fmt: skip
    for kind, ls in all_lines.items():
        _write_text(os.path.join(out, f"all.{kind}"), "".join(x + "\n" for x in ls))
    _write_text(os.path.join(out, MANIFEST), "".join(json.dumps(m) + "\n" for m in manifest))
    return manifest


def main(argv: Sequence[str]) -> None:
    del argv
    from absl import flags

    f = flags.FLAGS
    manifest = write_corpus(f.export, f.out, model_words=f.model_words, overwrite=f.overwrite)
    print(f"[corpus] {len(manifest)} recordings -> {f.out} (audio/, rttm/, stm/, ctm/, all.*, {MANIFEST})",
          flush=True)


if __name__ == "__main__":
    from absl import flags

    from interaction_jax.cli import run

    flags.DEFINE_string("export", None, "an --export_fdb folder (or one of its task roots)", required=True)
    flags.DEFINE_string("out", None, "the corpus folder to write", required=True)
    flags.DEFINE_enum("model_words", "audio", ["audio", "text"], "model word times: re-timed on its audio, or "
                      "the text stream's")
    flags.DEFINE_bool("overwrite", False, "replace a non-empty --out")
    run(main)


__all__ = ["ctm_lines", "group_words", "input_words", "rttm_lines", "sample_corpus", "stm_lines", "write_corpus"]
