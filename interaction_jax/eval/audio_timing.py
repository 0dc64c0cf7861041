"""Speech times from the model's audio, not its text stream: a VAD on `output.wav` and the timing metrics.

The text stream's clock is not when a word is heard: a word's text slot can lead its audio by up
to a micro-turn, and its text ends after its byte count while the audio runs on. Latencies that
an outside tool measures on the waveform (FDB's `get_timing.py` runs Silero VAD on `output.wav`)
must be measured on the waveform here too. This module does that with a pure-numpy energy VAD
(no weights, deterministic), suited to the exported `output.wav`, whose silence is Griffin-Lim of
the silent mel (about -140 dBFS) and whose speech is peak-limited to 0.9:

  frame      non-overlapping `frame_ms` (20 ms) frames; level = frame RMS in dBFS (1.0 = 0 dB)
  threshold  a frame is loud when its level exceeds `threshold_db` (-40 dBFS)
  hangover   loud runs separated by less than `hangover_ms` (200 ms) are one segment (stop
             consonants, short pauses inside an utterance); offline, so it bridges both ways
  minimum    segments shorter than `min_speech_ms` (60 ms) after bridging are dropped (clicks)

A segment's onset is the start of its first loud frame and its offset the end of its last one,
so both are exact to one frame. The same VAD runs on `input.wav` (all voices of the input).

Words are re-timed onto the audio (`align_words`): each text-stream word goes to the speech
segment its text interval (end extended by `ALIGN_SLACK_S`) overlaps most; a segment's words
share its span in proportion to their characters (+1 for the space), so the first word starts at
the segment's onset and the last ends at its offset. Inner word boundaries are an estimate, not a
measurement; words with no segment are dropped from the audio timing (they were not voiced).
`word_audio_times` gives the same times per word in the given order (None when unvoiced), for
`stream`'s transcript.json; `run_speech` runs the VAD on an `EpisodeRun`'s Griffin-Lim audio,
for the `fd` benchmark's audio measures (`benchmarks.fd_audio`).

Metrics (`timing_metrics`), computed from audio segments and, for comparison, from the text
stream's utterances (its words merged with the same hangover), per sample:

  first_onset_s            first speech anywhere in the sample (what FDB's latency starts from)
  fdb_take_turn, fdb_latency_s   FDB's rule on the words: no turn when there are at most 3 words
                           spanning under 1 s; latency = first word start - the end of the user's
                           turn (`turn_taking.json` timestamp[0], `interrupt.json` timestamp[1]),
                           clamped to 0 (for the audio column: audio-timed words)
  response_latency_s       first onset in [end of turn, +3 s) - end of turn (this project's rule)
  speaking_at_interrupt, stop_latency_s   interruption (`interrupt.json` timestamp[0]): was the
                           model speaking at the onset, and offset of that speech - onset
  windows                  per grading window of `episode.json`: `stop` (speaking at its start,
                           stop latency, stopped before its end) and `no_stop` (speaking at its
                           start, one segment spans it within one micro-turn at either edge: a
                           backchannel talked through)
  short_segments_per_s     segments under 3 s per second (FDB's backchannel frequency)

`write_timing(root)` writes per sample `timing.json` (`{"vad", "input_speech", "output_speech",
"words_text", "words_audio", "metrics": {"audio", "text"}}`) and `output_audio.json` (FDB's
`output.json` schema, audio-timed, the same words `output.json` keeps), and `OUT/timing_summary.json`
(per task root, each metric's mean and median over its samples, audio and text; never a file
inside a task root, whose every entry FDB's scripts open as a sample). The text
column uses `output.json`'s words unless the runs are passed (`export_fdb_tree`'s return value):
`output.json` of `user_interruption` keeps only the words after the interruption, so its text
stop latency needs the runs. `--fdb_words=audio` makes `output.json` itself audio-timed (the
text version kept as `output_text.json`), so FDB's own scripts score audio times.

    python -m interaction_jax.eval.audio_timing --export=OUT [--fdb_words=audio]
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping, Sequence

import numpy as np

from interaction_jax.data.episode import Word

Segment = tuple[float, float]
TIMING_JSON, OUTPUT_AUDIO_JSON, OUTPUT_TEXT_JSON = "timing.json", "output_audio.json", "output_text.json"
SUMMARY_JSON = "timing_summary.json"
ALIGN_SLACK_S = 0.5  # a word's audio may run this far past its text end (bytes at 20 B/s end early)
TAKEOVER_S = 3.0  # response_latency_s: a response must start within this after the turn ends
EDGE_S = 0.2  # no_stop windows: tolerance at either edge (one micro-turn, as the text grader)
SHORT_SEGMENT_S = 3.0  # FDB backchannel: speech shorter than this is not a turn
FDB_MAX_WORDS, FDB_MIN_SPAN_S = 3, 1.0  # FDB: <= 3 words spanning < 1 s is no turn


@dataclasses.dataclass(frozen=True)
class VadParams:
    """Energy-VAD settings (module docstring): frame size, level threshold, hangover, minimum speech."""

    frame_ms: float = 20.0
    threshold_db: float = -40.0
    hangover_ms: float = 200.0
    min_speech_ms: float = 60.0

    def __post_init__(self) -> None:
        if self.frame_ms <= 0 or self.hangover_ms < 0 or self.min_speech_ms < 0:
            raise ValueError(f"VadParams: frame_ms must be positive, hangover/min_speech non-negative: {self}")


# ---- VAD -----------------------------------------------------------------------------------------
def frame_levels_db(audio: np.ndarray, sr: int, frame_ms: float = 20.0) -> np.ndarray:
    """[n_frames] frame RMS in dBFS; a last partial frame is padded with zeros (its level is of what is there)."""
    n = max(1, int(round(sr * frame_ms / 1000.0)))
    x = np.asarray(audio, np.float64).reshape(-1)
    if x.size == 0:
        return np.zeros(0)
    k = -(-x.size // n)
    padded = np.zeros(k * n)
    padded[: x.size] = x
    counts = np.full(k, n, np.float64)
    counts[-1] = x.size - (k - 1) * n
    power = np.sum(padded.reshape(k, n) ** 2, axis=1) / counts
    return 10.0 * np.log10(power + 1e-20)


def speech_segments(audio: np.ndarray, sr: int, params: VadParams = VadParams()) -> list[Segment]:
    """[(onset_s, offset_s)] of speech in `audio` by the energy VAD (module docstring), in time order."""
    loud = frame_levels_db(audio, sr, params.frame_ms) > params.threshold_db
    frame = max(1, int(round(sr * params.frame_ms / 1000.0))) / sr
    runs: list[list[int]] = []  # [first frame, last frame + 1]
    for i in np.flatnonzero(loud):
        if runs and (i - runs[-1][1]) * frame < params.hangover_ms / 1000.0:
            runs[-1][1] = int(i) + 1
        else:
            runs.append([int(i), int(i) + 1])
    dur = len(np.asarray(audio).reshape(-1)) / sr
    return [(round(a * frame, 4), round(min(b * frame, dur), 4)) for a, b in runs
            if (b - a) * frame >= params.min_speech_ms / 1000.0 - 1e-9]


def text_segments(words: Sequence[Word], hangover_s: float = VadParams.hangover_ms / 1000.0) -> list[Segment]:
    """The text stream's utterances: word intervals merged when the gap is under `hangover_s` (the VAD's rule)."""
    out: list[list[float]] = []
    for w in sorted(words, key=lambda w: w.start):
        if out and w.start - out[-1][1] < hangover_s:
            out[-1][1] = max(out[-1][1], w.end)
        else:
            out.append([w.start, w.end])
    return [(a, b) for a, b in out]


def _assign(words: Sequence[Word], segments: Sequence[Segment], slack_s: float) -> dict[int, list[int]]:
    """{segment index: indices of the words it holds, by start time}: each word to the segment it overlaps most."""
    groups: dict[int, list[int]] = {}
    for i in sorted(range(len(words)), key=lambda i: words[i].start):
        w, best, best_overlap = words[i], None, 0.0
        for k, (a, b) in enumerate(segments):
            overlap = min(b, w.end + slack_s) - max(a, w.start)
            if overlap > best_overlap:
                best, best_overlap = k, overlap
        if best is not None:
            groups.setdefault(best, []).append(i)
    return groups


def word_audio_times(words: Sequence[Word], segments: Sequence[Segment],
                     slack_s: float = ALIGN_SLACK_S) -> list[Segment | None]:
    """Per word, in the given order: its (start, end) on the audio segments (module docstring), None if unvoiced."""
    out: list[Segment | None] = [None] * len(words)
    for k, idx in _assign(words, segments, slack_s).items():
        a, b = segments[k]
        weights = np.array([len(words[i].text) + 1.0 for i in idx])
        edges = a + (b - a) * np.concatenate([[0.0], np.cumsum(weights) / weights.sum()])
        for i, s, e in zip(idx, edges[:-1], edges[1:], strict=True):
            out[i] = (round(float(s), 4), round(float(e), 4))
    return out


def align_words(words: Sequence[Word], segments: Sequence[Segment], slack_s: float = ALIGN_SLACK_S) -> list[Word]:
    """Text-stream words re-timed onto the audio segments (module docstring); unvoiced words are dropped."""
    times = word_audio_times(words, segments, slack_s)
    out = [Word(w.text, *t) for w, t in zip(words, times, strict=True) if t is not None]
    return sorted(out, key=lambda w: w.start)


def run_speech(run, params, n_iter: int = 32, vad: VadParams = VadParams()) -> list[Segment] | None:
    """VAD segments of a run's own waveform (Griffin-Lim of its mel on the episode clock); None if it has no mel."""
    if run.mel is None:
        return None
    from interaction_jax.eval.spoken import episode_audio

    return speech_segments(episode_audio(run, params, n_iter), int(params.sample_rate), vad)


# ---- metrics -------------------------------------------------------------------------------------
def speaking_at(segments: Sequence[Segment], t: float) -> Segment | None:
    """The segment that contains time t (onset <= t < offset), if any."""
    return next(((a, b) for a, b in segments if a <= t < b), None)


def first_onset(segments: Sequence[Segment], after: float = -math.inf, before: float = math.inf) -> float | None:
    """The first onset in [after, before), if any."""
    return next((a for a, _ in sorted(segments) if after <= a < before), None)


def fdb_turn(words: Sequence[Word], turn_end: float) -> tuple[int, float | None]:
    """FDB's turn rule on a word list: (take_turn 0/1, latency clamped to 0 or None when no turn)."""
    words = sorted(words, key=lambda w: w.start)
    if not words:
        return 0, None
    span = words[-1].end - words[0].start
    if len(words) <= FDB_MAX_WORDS and span < FDB_MIN_SPAN_S:
        return 0, None
    return 1, max(0.0, words[0].start - turn_end)


def window_metrics(segments: Sequence[Segment], windows: Sequence[Mapping]) -> list[dict]:
    """Per `stop` / `no_stop` window ({"kind", "start", "end"}): its audio measures (module docstring)."""
    out = []
    for w in windows:
        kind, start, end = w.get("kind"), float(w["start"]), float(w["end"])
        if kind not in ("stop", "no_stop"):
            continue
        seg = speaking_at(segments, start)
        rec: dict = {"kind": kind, "start": start, "end": end, "speaking_at_start": seg is not None}
        if kind == "stop":
            rec["stop_latency_s"] = round(seg[1] - start, 4) if seg else None
            rec["stopped"] = bool(seg and seg[1] <= end and speaking_at(segments, end) is None)
        else:
            rec["talked_through"] = any(a <= start + EDGE_S and b >= end - EDGE_S for a, b in segments)
        out.append(rec)
    return out


def timing_metrics(segments: Sequence[Segment], words: Sequence[Word], *, duration: float, task: str | None = None,
                   annotation: Sequence[Mapping] | None = None, windows: Sequence[Mapping] = ()) -> dict:
    """Per-sample timing metrics (module docstring) from one source: speech segments and its timed words.

    `words` is the list FDB would score (for `user_interruption`, the words after the end of
    the interruption); `annotation` is the task's FDB annotation list.
    """
    m: dict = {"first_onset_s": first_onset(segments), "speech_s": round(sum(b - a for a, b in segments), 4),
               "segments": len(segments)}
    ts = list(annotation[0]["timestamp"]) if annotation else None
    if task == "smooth_turn_taking" and ts:
        turn_end = float(ts[0])
    elif task == "user_interruption" and ts:
        turn_end = float(ts[1])
        seg = speaking_at(segments, float(ts[0]))
        m["speaking_at_interrupt"] = seg is not None
        m["stop_latency_s"] = round(seg[1] - float(ts[0]), 4) if seg else None
    else:
        turn_end = None
    if turn_end is not None:
        m["fdb_take_turn"], m["fdb_latency_s"] = fdb_turn(words, turn_end)
        onset = first_onset(segments, turn_end, turn_end + TAKEOVER_S)
        m["response_latency_s"] = round(onset - turn_end, 4) if onset is not None else None
    if task == "backchannel" or task is None:
        short = sum(1 for a, b in segments if b - a < SHORT_SEGMENT_S)
        m["short_segments_per_s"] = round(short / duration, 4) if duration > 0 else None
    wm = window_metrics(segments, windows)
    if wm:
        m["windows"] = wm
    return m


# ---- per sample / per root -----------------------------------------------------------------------
def _read_json(path: str):
    with open(path) as f:
        return json.load(f)


def _words_from_chunks(obj) -> list[Word]:
    """Words of FDB's output.json schema (chunks with [start, end]); chunks without times are skipped."""
    out = []
    for c in obj.get("chunks", []) if isinstance(obj, dict) else []:
        ts = c.get("timestamp") or [None, None]
        if ts[0] is None:
            continue
        out.append(Word(str(c.get("text", "")), float(ts[0]), float(ts[1] if ts[1] is not None else ts[0])))
    return out


def _word_dicts(words: Sequence[Word]) -> list[dict]:
    return [{"text": w.text, "timestamp": [round(w.start, 4), round(w.end, 4)]} for w in words]


def sample_timing(sample_dir: str, task: str, words: Sequence[Word] | None = None,
                  params: VadParams = VadParams()) -> dict:
    """`timing.json` of one exported sample: VAD of input/output.wav, audio-timed words, metrics (audio, text).

    `words` are the run's text-stream words (all of them); default: the sample's
    `output_text.json`, else `output.json`.
    """
    from interaction_jax.eval.fdb import FdbError, read_annotation
    from interaction_jax.features.audio import AudioError, load_audio

    audio = {}
    for name in ("input.wav", "output.wav"):
        try:
            audio[name] = load_audio(os.path.join(sample_dir, name), 16000)
        except (AudioError, OSError, RuntimeError) as e:
            raise FdbError(f"audio_timing: {os.path.join(sample_dir, name)}: {e}") from e
    duration = len(audio["input.wav"]) / 16000
    if words is None:
        name = OUTPUT_TEXT_JSON if os.path.isfile(os.path.join(sample_dir, OUTPUT_TEXT_JSON)) else "output.json"
        words = _words_from_chunks(_read_json(os.path.join(sample_dir, name)))
    annotation = read_annotation(sample_dir, task)  # v1.5's overlap roots: None, no v1 turn to time against
    after = float(annotation[0]["timestamp"][1]) if task == "user_interruption" and annotation else 0.0
    ep_path = os.path.join(sample_dir, "episode.json")
    windows = _read_json(ep_path).get("grading", []) if os.path.isfile(ep_path) else []
    out_speech = speech_segments(audio["output.wav"], 16000, params)
    words_text = sorted(words, key=lambda w: w.start)
    words_audio = align_words(words_text, out_speech)
    def metrics(segments, ws):  # scored on the words output.json keeps
        kept = [w for w in ws if after <= w.start < duration]
        return timing_metrics(segments, kept, duration=duration, task=task, annotation=annotation, windows=windows)

    return {
        "vad": {**dataclasses.asdict(params), "sample_rate": 16000},
        "duration": round(duration, 4),
        "input_speech": [list(s) for s in speech_segments(audio["input.wav"], 16000, params)],
        "output_speech": [list(s) for s in out_speech],
        "words_text": _word_dicts(words_text), "words_audio": _word_dicts(words_audio),
        "output_json_after_s": after,
        "metrics": {"audio": metrics(out_speech, words_audio), "text": metrics(text_segments(words_text),
                                                                               words_text)},
    }


def _stats(values: Sequence[float]) -> dict:
    v = [float(x) for x in values if x is not None]
    return {"mean": round(float(np.mean(v)), 4) if v else None,
            "median": round(float(np.median(v)), 4) if v else None, "n": len(v)}


SUMMARY_KEYS = ("first_onset_s", "fdb_take_turn", "fdb_latency_s", "response_latency_s", "stop_latency_s",
                "short_segments_per_s")


def summarize(timings: Sequence[Mapping]) -> dict:
    """{"audio"|"text": {metric: {mean, median, n}}} over samples; plus window rates (stopped, talked through)."""
    out = {}
    for src in ("audio", "text"):
        ms = [t["metrics"][src] for t in timings]
        s = {k: _stats([m.get(k) for m in ms]) for k in SUMMARY_KEYS if any(k in m for m in ms)}
        wins = [w for m in ms for w in m.get("windows", []) if w["speaking_at_start"]]
        stops = [w for w in wins if w["kind"] == "stop"]
        nostops = [w for w in wins if w["kind"] == "no_stop"]
        if stops:
            s["window_stop_rate"] = round(sum(w["stopped"] for w in stops) / len(stops), 4)
            s["window_stop_latency_s"] = _stats([w["stop_latency_s"] for w in stops])
        if nostops:
            s["window_talked_through_rate"] = round(sum(w["talked_through"] for w in nostops) / len(nostops), 4)
        out[src] = s
    return {"samples": len(timings), **out}


def write_timing(root: str, runs: Mapping[str, Sequence] | None = None, *, params: VadParams = VadParams(),
                 fdb_words: str = "text", roots: Sequence[str] | None = None) -> dict[str, dict]:
    """timing.json + output_audio.json per sample and one timing_summary.json, for an export `root`.

    `runs`: {root name: EpisodeRun list in sample order} as `export_fdb_tree` returns, for the
    text column's full word lists. `fdb_words="audio"` rewrites output.json audio-timed (text
    version kept as output_text.json). `roots`: the task roots to time (default: every one in
    `root`). Returns {root name: summary}.
    """
    from interaction_jax.eval.fdb import OUTPUT_JSON, detect_task, sample_dirs, task_roots, transcript_json, write_json

    if fdb_words not in ("text", "audio"):
        raise ValueError(f"audio_timing: fdb_words={fdb_words!r}; expected text or audio")
    summaries = {}
    all_roots = task_roots(root)
    for task_root in roots if roots is not None else all_roots:
        name = os.path.basename(os.path.normpath(task_root))
        ids = sample_dirs(task_root)
        task = detect_task(task_root, ids)
        by_id = {r.episode_id: r for r in (runs or {}).get(name, [])}
        timings = []
        for sid in ids:
            d = os.path.join(task_root, sid)
            run = by_id.get(sid)
            t = sample_timing(d, task, list(run.words) if run is not None else None, params)
            timings.append(t)
            write_json(os.path.join(d, TIMING_JSON), t)
            words_audio = _words_from_chunks({"chunks": t["words_audio"]})
            fdb_json = transcript_json(words_audio, t["duration"], after=t["output_json_after_s"])
            write_json(os.path.join(d, OUTPUT_AUDIO_JSON), fdb_json)
            if fdb_words == "audio":
                text_path = os.path.join(d, OUTPUT_TEXT_JSON)
                if not os.path.exists(text_path):
                    os.replace(os.path.join(d, OUTPUT_JSON), text_path)
                write_json(os.path.join(d, OUTPUT_JSON), fdb_json)
        summaries[name] = summarize(timings)
    is_tree = [os.path.normpath(d) for d in all_roots] != [os.path.normpath(root)]
    # never a file inside a task root: FDB's turn-taking and pause scripts open every entry as a sample
    path = (os.path.join(root, SUMMARY_JSON) if is_tree else
            os.path.join(os.path.dirname(os.path.abspath(root)), f"{os.path.basename(os.path.normpath(root))}."
                         f"{SUMMARY_JSON}"))
    write_json(path, summaries)
    return summaries


def main(argv: Sequence[str]) -> None:
    del argv
    from absl import flags

    f = flags.FLAGS
    summaries = write_timing(f.export, fdb_words=f.fdb_words)
    for name, s in summaries.items():
        print(f"[audio_timing] {name}: {s['samples']} samples; timing.json + {OUTPUT_AUDIO_JSON} written", flush=True)
        for key in SUMMARY_KEYS:
            a, t = s["audio"].get(key), s["text"].get(key)
            if a and a["n"] + (t or {}).get("n", 0):
                print(f"  {key:22s} audio median {a['median']}  text median {(t or {}).get('median')}", flush=True)


if __name__ == "__main__":
    from absl import flags

    from interaction_jax.cli import run

    flags.DEFINE_string("export", None, "an --export_fdb folder (or one of its task roots)", required=True)
    flags.DEFINE_enum("fdb_words", "text", ["text", "audio"], "which word times output.json holds afterwards")
    run(main)


__all__ = ["VadParams", "align_words", "fdb_turn", "first_onset", "frame_levels_db", "run_speech", "sample_timing",
           "speaking_at", "speech_segments", "summarize", "text_segments", "timing_metrics", "window_metrics",
           "word_audio_times", "write_timing"]
