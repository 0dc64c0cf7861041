"""Mono two-party recordings with RTTM/STM/CTM: a generated recording with known speaker turns is split into the
user and model channels exactly at those turns, words get their speakers, and misuse fails with one line."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

from interaction_jax.data import corpus
from interaction_jax.data.episode import Word

SR = 8000
DUR = 5.0
# known turns: A (the user), B (the model), C (a third voice); B overlaps A in [3.4, 3.6)
TURNS = {"A": [(0.5, 1.5), (3.0, 3.6)], "B": [(1.8, 2.8), (3.4, 4.2)], "C": [(4.5, 4.9)]}
FREQ = {"A": 300.0, "B": 1000.0, "C": 600.0}
# (speaker, word, start, end): what the STM/CTM say and what the reader must return
WORDS = [("A", "hello", 0.5, 0.9), ("A", "there", 1.0, 1.5), ("B", "hi", 1.8, 2.1), ("B", "how_are", 2.2, 2.8),
         ("A", "wait", 3.0, 3.5), ("B", "sorry", 3.7, 4.2), ("C", "psst", 4.5, 4.9)]
ROLE = {"A": "user", "B": "model", "C": "other"}


def _t() -> np.ndarray:
    return np.arange(int(DUR * SR)) / SR


def _inside(spans) -> np.ndarray:
    t = _t()
    return np.any([(t >= a) & (t < b) for a, b in spans], axis=0)


@pytest.fixture()
def rec(tmp_path):
    """mix.wav (tones per speaker at the known turns), RTTM/STM/CTM written by hand from the format definitions."""
    t = _t()
    mix = sum(0.2 * np.sin(2 * np.pi * FREQ[s] * t) * _inside(spans) for s, spans in TURNS.items())
    sf.write(tmp_path / "mix.wav", mix.astype(np.float32), SR, subtype="FLOAT")
    rttm = [f"SPEAKER call1 1 {a:.3f} {b - a:.3f} <NA> <NA> {s} <NA> <NA>" for s, sp in TURNS.items() for a, b in sp]
    rttm += ["SPEAKER other_call 1 0.000 9.000 <NA> <NA> Z <NA> <NA>", "SPKR-INFO call1 1 <NA> <NA> <NA> A <NA>"]
    (tmp_path / "all.rttm").write_text("\n".join(rttm) + "\n")
    stm = [";; comment", "call1 1 A 0.500 1.500 <o,f0,male> hello there", "call1 1 B 1.800 2.800 hi how_are",
           "call1 1 A 3.000 3.600 wait", "call1 1 B 3.600 4.200 sorry", "call1 1 C 4.500 4.900 psst",
           "call1 1 A 4.950 5.000 ignore_time_segment_in_scoring"]
    (tmp_path / "a.stm").write_text("\n".join(stm) + "\n")
    ctm = [f"call1 1 {a:.3f} {b - a:.3f} {w} 0.9" for _, w, a, b in WORDS]
    (tmp_path / "a.ctm").write_text("\n".join(ctm) + "\n")
    return tmp_path, mix.astype(np.float32)


def _manifest(folder, *lines) -> str:
    p = folder / "corpus.jsonl"
    p.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return str(p)


BASE = {"id": "call1", "audio": "mix.wav", "rttm": "all.rttm", "speakers": {"user": "A", "model": "B"}}


def test_mono_recording_splits_at_the_known_turns(rec):
    folder, mix = rec
    (spec,) = corpus.read_manifest(_manifest(folder, {**BASE, "stm": "a.stm", "ctm": "a.ctm"}))
    ep = corpus.load_conversation(spec, sample_rate=SR)
    model_only = _inside(TURNS["B"]) & ~_inside(TURNS["A"] + TURNS["C"])
    np.testing.assert_array_equal(ep.model_audio, np.where(model_only, mix, 0.0))
    np.testing.assert_array_equal(ep.user_audio, np.where(model_only, 0.0, mix))
    # the model channel is the model's voice alone: silent in the overlap, no user tone anywhere
    t = _t()
    assert not ep.model_audio[(t >= 3.4) & (t < 3.6)].any()
    spectrum = np.abs(np.fft.rfft(ep.model_audio))
    freqs = np.fft.rfftfreq(ep.model_audio.size, 1 / SR)
    assert spectrum[np.argmin(np.abs(freqs - 300))] < 1e-3 * spectrum[np.argmin(np.abs(freqs - 1000))]
    # words: CTM times, speakers from the STM utterance they lie in ("wait" 3.0-3.5 is the user's)
    got = sorted((w.start, w.end, w.text, role) for role, ws in (("user", ep.user_words), ("model", ep.model_words),
                                                                 ("other", ep.other_words)) for w in ws)
    want = sorted((a, b, w.replace("_", " "), ROLE[s]) for s, w, a, b in WORDS)
    assert [(g[2], g[3]) for g in got] == [(w[2], w[3]) for w in want]
    np.testing.assert_allclose([g[:2] for g in got], [w[:2] for w in want], atol=1e-9)
    assert ep.metadata["mono_mix"] and ep.metadata["overlap"] == "user"


def test_overlap_both_keeps_the_overlap_in_the_model_channel(rec):
    folder, mix = rec
    (spec,) = corpus.read_manifest(_manifest(folder, {**BASE, "ctm": "a.ctm", "overlap": "both"}))
    ep = corpus.load_conversation(spec, sample_rate=SR)
    model = _inside(TURNS["B"])
    np.testing.assert_array_equal(ep.model_audio, np.where(model, mix, 0.0))
    model_only = model & ~_inside(TURNS["A"] + TURNS["C"])
    np.testing.assert_array_equal(ep.user_audio, np.where(model_only, 0.0, mix))
    # CTM only: speakers from the RTTM turn each word overlaps most
    assert [w.text for w in ep.user_words] == ["hello", "there", "wait"]
    assert [w.text for w in ep.model_words] == ["hi", "how are", "sorry"]


def test_stm_alone_spreads_words_over_the_utterance(rec):
    folder, _ = rec
    (spec,) = corpus.read_manifest(_manifest(folder, {**BASE, "stm": "a.stm"}))
    ep = corpus.load_conversation(spec, sample_rate=SR)
    hello, there = ep.user_words[:2]
    assert (hello.text, there.text) == ("hello", "there")
    assert hello.start == pytest.approx(0.5) and there.end == pytest.approx(1.5)
    assert hello.end == pytest.approx(there.start) == pytest.approx(0.5 + 1.0 * 6 / 12)  # "hello " of "hello there "
    assert [w.text for w in ep.other_words] == ["psst"] and ep.user_words[-1].text == "wait"  # ignored segment gone


def test_writer_files_read_back_with_default_speaker_names(tmp_path):
    """RTTM/CTM from eval/corpus_formats' writers, speakers named user/model (no 'speakers' needed)."""
    from interaction_jax.eval.corpus_formats import ctm_lines, rttm_lines

    user, model = [(0.4, 1.2)], [(1.5, 2.5)]
    t = np.arange(int(3.0 * SR)) / SR
    mix = 0.2 * np.sin(2 * np.pi * 300 * t) * ((t >= 0.4) & (t < 1.2)) + 0.2 * np.sin(2 * np.pi * 900 * t) * (
        (t >= 1.5) & (t < 2.5))
    sf.write(tmp_path / "m.wav", mix.astype(np.float32), SR, subtype="FLOAT")
    turns = [("user", a, b, []) for a, b in user] + [("model", a, b, []) for a, b in model]
    (tmp_path / "m.rttm").write_text("".join(x + "\n" for x in rttm_lines("m", turns)))
    (tmp_path / "m.ctm").write_text("".join(x + "\n" for x in ctm_lines("m", [Word("hey", 0.4, 1.2),
                                                                             Word("yes", 1.5, 2.5)])))
    (spec,) = corpus.read_manifest(_manifest(tmp_path, {"id": "m", "audio": "m.wav", "rttm": "m.rttm",
                                                        "ctm": "m.ctm"}))
    ep = corpus.load_conversation(spec, sample_rate=SR)
    assert set(np.flatnonzero(ep.model_audio)) <= set(np.flatnonzero((t >= 1.5) & (t < 2.5)))
    assert not ep.user_audio[(t >= 1.5) & (t < 2.5)].any() and ep.user_audio[(t >= 0.4) & (t < 1.2)].any()
    assert [w.text for w in ep.user_words] == ["hey"] and [w.text for w in ep.model_words] == ["yes"]


BAD = [
    ({"id": "x", "audio": {"user": "mix.wav", "model": "mix.wav"}, "words": []},
     "'user' and 'model' are the same file"),
    ({"id": "x", "audio": "mix.wav", "words": []}, "is mono: a recording of both parties needs 'rttm'"),
    ({**BASE, "speakers": None, "ctm": "a.ctm"}, "which RTTM speakers are the user and the model"),
    ({**BASE, "speakers": {"user": "A", "model": "A"}, "ctm": "a.ctm"}, "the same speaker 'A'"),
    ({**BASE, "speakers": {"user": "A", "model": "Q"}, "ctm": "a.ctm"}, "speaker 'Q' has no turn"),
    ({**BASE}, "needs 'stm', 'ctm', 'words' or 'words_file'"),
    ({**BASE, "ctm": "a.ctm", "overlap": "model"}, "'overlap': must be one of"),
    ({**BASE, "id": "call9", "ctm": "a.ctm"}, "no lines for recording 'call9'"),
    ({**BASE, "ctm": "a.ctm", "duration": 4.0}, "outside the audio"),
]


@pytest.mark.parametrize("line,match", BAD, ids=[m for _, m in BAD])
def test_misuse_fails_with_one_line(rec, line, match):
    folder, _ = rec
    if line.get("speakers") is None:
        line = {k: v for k, v in line.items() if k != "speakers"}
    with pytest.raises(corpus.CorpusError) as e:
        corpus.read_manifest(_manifest(folder, line))
    msg = str(e.value).splitlines()
    assert len(msg) == 2 and "line 1: field" in msg[1] and match in msg[1], msg
