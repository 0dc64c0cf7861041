"""Audio-based timing of an FDB export: the energy VAD on tone bursts at known times, words re-timed onto the
audio, and latencies from the audio beside the text stream's, on hand-built samples (no model involved)."""

import json
import os
import stat
from types import SimpleNamespace

import numpy as np
import pytest

from interaction_jax.data.episode import Word
from interaction_jax.eval import audio_timing as at
from interaction_jax.features.audio import save_wav

SR = 16000
FRAME = 0.02  # the VAD's frame: onsets/offsets are exact to one frame


def _signal(bursts, duration, level=0.3, noise_db=-80.0, seed=0):
    """Tone bursts (start_s, end_s) on a noise floor of `noise_db` dBFS RMS."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(duration * SR)) / SR
    x = rng.normal(0.0, 10 ** (noise_db / 20), t.size)
    for a, b in bursts:
        m = (t >= a) & (t < b)
        x[m] += level * np.sin(2 * np.pi * 230 * t[m]) * (1.0 + 0.3 * np.sin(2 * np.pi * 4 * t[m]))
    return x.astype(np.float32)


def _close(segs, expected, tol=FRAME + 1e-6):
    assert len(segs) == len(expected), (segs, expected)
    for (a, b), (ea, eb) in zip(segs, expected, strict=True):
        assert abs(a - ea) <= tol and abs(b - eb) <= tol, (segs, expected)


def test_vad_finds_known_onsets_offsets_bridges_gaps_drops_clicks():
    bursts = [(0.513, 1.307), (2.0, 2.5), (3.0, 3.03), (4.0, 4.4), (4.5, 5.0)]
    segs = at.speech_segments(_signal(bursts, 6.0), SR)
    # the 30 ms click is under min_speech_ms; the 100 ms gap is under the 200 ms hangover
    _close(segs, [(0.513, 1.307), (2.0, 2.5), (4.0, 5.0)])
    # a gap at least as long as the hangover splits
    _close(at.speech_segments(_signal([(1.0, 1.5), (1.75, 2.2)], 3.0), SR), [(1.0, 1.5), (1.75, 2.2)])


def test_vad_threshold_is_absolute_dbfs():
    quiet = _signal([(1.0, 2.0)], 3.0, level=10 ** (-48 / 20) * np.sqrt(2))  # tone RMS about -48 dBFS
    loud = _signal([(1.0, 2.0)], 3.0, level=10 ** (-32 / 20) * np.sqrt(2))  # about -32 dBFS
    assert at.speech_segments(quiet, SR) == []
    _close(at.speech_segments(loud, SR), [(1.0, 2.0)])
    levels = at.frame_levels_db(loud, SR)
    assert levels.shape == (150,)
    assert abs(np.median(levels[60:90]) - (-32.0)) < 1.5 and levels[:40].max() < -60


def test_griffin_lim_of_the_silent_mel_is_silence():
    from interaction_jax.features.mel import FeatureParams, dmel_decode, mel_to_audio

    p = FeatureParams()
    sil = mel_to_audio(dmel_decode(np.zeros((80, p.n_mels), np.int32), p), p, n_iter=4, length=80 * p.hop_length)
    assert at.speech_segments(sil, SR) == []


def test_align_words_puts_text_words_on_the_audio():
    segs = [(1.0, 2.0), (3.0, 3.5)]
    # text slots lead the audio, text ends early (bytes at 20 B/s); "zz" has no audio at all
    words = [Word("hello", 0.85, 1.1), Word("big", 1.2, 1.35), Word("world", 1.4, 1.65), Word("yes", 2.85, 3.0),
             Word("zz", 5.0, 5.1)]
    out = at.align_words(words, segs)
    assert [w.text for w in out] == ["hello", "big", "world", "yes"]
    assert out[0].start == 1.0 and out[2].end == 2.0 and (out[3].start, out[3].end) == (3.0, 3.5)
    assert all(a.end == b.start for a, b in zip(out[:2], out[1:3], strict=True))  # contiguous inside a segment
    assert out[0].end - out[0].start == pytest.approx((2.0 - 1.0) * 6 / 16)  # "hello " of "hello big world "


def test_fdb_turn_rule():
    assert at.fdb_turn([], 1.0) == (0, None)
    assert at.fdb_turn([Word("mm", 2.0, 2.3), Word("hm", 2.4, 2.6)], 1.0) == (0, None)  # <= 3 words, < 1 s
    assert at.fdb_turn([Word("mm", 2.0, 2.3), Word("hm", 2.4, 3.1)], 1.0) == (1, 1.0)  # spans >= 1 s
    assert at.fdb_turn([Word(w, 0.5 + 0.1 * i, 0.55 + 0.1 * i) for i, w in enumerate("abcd")], 1.0) == (1, 0.0)


# ---- a hand-built export -------------------------------------------------------------------------
DUR = 8.0
ONSET, INT_END = 3.0, 4.0  # interrupt.json timestamp
MODEL_AUDIO = [(0.6, 3.5), (4.6, 6.0)]  # heard: stops 0.5 s after the onset, answers 0.6 s after the end
# text stream: words lead their audio by 0.15 s and end 0.3 s early; one gap of 0.3 s inside the first utterance
MODEL_TEXT = ([Word("one", 0.45, 0.9), Word("two", 1.0, 1.5), Word("three", 1.8, 3.2)]
              + [Word("sure", 4.45, 4.8), Word("here", 4.9, 5.2), Word("it", 5.3, 5.5), Word("is", 5.55, 5.7)])
TT_END = 2.0  # turn_taking.json timestamp[0]
TT_AUDIO, TT_TEXT = [(2.9, 4.0)], [Word("the", 2.7, 2.9), Word("answer", 3.0, 3.4), Word("is", 3.45, 3.6),
                                   Word("four", 3.62, 3.7)]


def _sample(d, user, model, words, annotation_name, annotation, grading=()):
    os.makedirs(d)
    save_wav(os.path.join(d, "input.wav"), _signal(user, DUR, seed=1), SR)
    save_wav(os.path.join(d, "output.wav"), _signal(model, DUR, seed=2), SR)
    after = annotation[0]["timestamp"][1] if annotation_name == "interrupt.json" else 0.0
    kept = [w for w in words if w.start >= after]
    with open(os.path.join(d, "output.json"), "w") as f:
        json.dump({"text": " ".join(w.text for w in kept),
                   "chunks": [{"text": w.text, "timestamp": [w.start, w.end]} for w in kept]}, f)
    with open(os.path.join(d, annotation_name), "w") as f:
        json.dump(annotation, f)
    with open(os.path.join(d, "episode.json"), "w") as f:
        json.dump({"grading": list(grading)}, f)


@pytest.fixture()
def export(tmp_path):
    root = str(tmp_path / "OUT")
    _sample(os.path.join(root, "user_interruption", "ui0"), [(0.2, 2.0), (ONSET, INT_END)], MODEL_AUDIO,
            MODEL_TEXT, "interrupt.json", [{"context": "a", "interrupt": "b", "timestamp": [ONSET, INT_END]}],
            grading=[{"kind": "no_stop", "start": 1.2, "end": 2.0, "expected": ""},
                     {"kind": "stop", "start": ONSET, "end": ONSET + 0.8, "expected": ""}])
    _sample(os.path.join(root, "smooth_turn_taking", "tt0"), [(0.3, TT_END)], TT_AUDIO, TT_TEXT,
            "turn_taking.json", [{"text": "q", "timestamp": [TT_END, DUR]}])
    return root


def _json(path):
    with open(path) as f:
        return json.load(f)


def test_latencies_from_audio_beside_the_text_stream(export):
    runs = {"user_interruption": [SimpleNamespace(episode_id="ui0", words=MODEL_TEXT)]}
    summary = at.write_timing(export, runs)
    assert sorted(summary) == ["smooth_turn_taking", "user_interruption"]
    t = _json(os.path.join(export, "user_interruption", "ui0", "timing.json"))
    _close([tuple(s) for s in t["output_speech"]], MODEL_AUDIO)
    _close([tuple(s) for s in t["input_speech"]], [(0.2, 2.0), (ONSET, INT_END)])
    assert t["vad"] == {"frame_ms": 20.0, "threshold_db": -40.0, "hangover_ms": 200.0, "min_speech_ms": 60.0,
                        "sample_rate": SR}
    audio, text = t["metrics"]["audio"], t["metrics"]["text"]
    tol = FRAME + 1e-6
    # stop latency: audio offset 3.5 - onset 3.0; text: last word ends 3.2
    assert audio["speaking_at_interrupt"] and text["speaking_at_interrupt"]
    assert abs(audio["stop_latency_s"] - 0.5) <= tol and text["stop_latency_s"] == pytest.approx(0.2)
    # response after the interruption: audio 4.6 - 4.0, text 4.45 - 4.0; FDB's rule gives the same here
    assert abs(audio["response_latency_s"] - 0.6) <= tol and text["response_latency_s"] == pytest.approx(0.45)
    assert audio["fdb_take_turn"] == text["fdb_take_turn"] == 1
    assert abs(audio["fdb_latency_s"] - 0.6) <= tol and text["fdb_latency_s"] == pytest.approx(0.45)
    assert abs(audio["first_onset_s"] - 0.6) <= tol and text["first_onset_s"] == pytest.approx(0.45)
    # the backchannel window [1.2, 2.0): the audio talks through it; the text's 0.3 s gap at 1.5-1.8 splits it
    (bc_a, stop_a), (bc_t, stop_t) = audio["windows"], text["windows"]
    assert bc_a["kind"] == "no_stop" and bc_a["talked_through"] and not bc_t["talked_through"]
    assert stop_a["stopped"] and abs(stop_a["stop_latency_s"] - 0.5) <= tol
    assert stop_t["stopped"] and stop_t["stop_latency_s"] == pytest.approx(0.2)
    # words re-timed onto the audio: the first after the interruption starts at the audio onset
    wa = t["words_audio"]
    assert [w["text"] for w in wa] == [w.text for w in MODEL_TEXT]
    assert abs(wa[0]["timestamp"][0] - 0.6) <= tol and abs(wa[3]["timestamp"][0] - 4.6) <= tol
    assert abs(wa[-1]["timestamp"][1] - 6.0) <= tol
    # output_audio.json: FDB's schema, the words output.json keeps (after the interruption's end), audio-timed
    oa = _json(os.path.join(export, "user_interruption", "ui0", "output_audio.json"))
    assert oa["text"] == "sure here it is" and abs(oa["chunks"][0]["timestamp"][0] - 4.6) <= tol

    tt = _json(os.path.join(export, "smooth_turn_taking", "tt0", "timing.json"))["metrics"]
    assert abs(tt["audio"]["response_latency_s"] - 0.9) <= tol
    assert tt["text"]["response_latency_s"] == pytest.approx(0.7)
    assert abs(tt["audio"]["fdb_latency_s"] - 0.9) <= tol and "stop_latency_s" not in tt["audio"]

    s = _json(os.path.join(export, "timing_summary.json"))  # beside the task roots, never inside one
    assert s == json.loads(json.dumps(summary))
    ui = s["user_interruption"]
    assert ui["samples"] == 1 and ui["audio"]["window_talked_through_rate"] == 1.0
    assert ui["text"]["window_talked_through_rate"] == 0.0
    assert abs(ui["audio"]["stop_latency_s"]["median"] - 0.5) <= tol
    for d in ("user_interruption", "smooth_turn_taking"):
        assert all(os.path.isdir(os.path.join(export, d, e)) for e in os.listdir(os.path.join(export, d)))
    assert stat.S_IMODE(os.stat(os.path.join(export, "smooth_turn_taking", "tt0", "timing.json")).st_mode) == 0o644


def test_without_runs_the_text_column_uses_output_json(export):
    at.write_timing(os.path.join(export, "user_interruption"))  # one task root: summary goes beside it
    t = _json(os.path.join(export, "user_interruption", "ui0", "timing.json"))
    assert [w["text"] for w in t["words_text"]] == ["sure", "here", "it", "is"]
    assert t["metrics"]["text"]["stop_latency_s"] is None  # no text words before the interruption's end
    assert abs(t["metrics"]["audio"]["stop_latency_s"] - 0.5) <= FRAME + 1e-6  # the audio still has it
    assert os.path.isfile(os.path.join(export, "user_interruption.timing_summary.json"))
    assert sorted(os.listdir(os.path.join(export, "user_interruption"))) == ["ui0"]


def test_fdb_words_audio_rewrites_output_json_once(export):
    d = os.path.join(export, "smooth_turn_taking", "tt0")
    original = _json(os.path.join(d, "output.json"))
    for _ in range(2):  # rerunning keeps the text version and re-derives from it
        at.write_timing(export, fdb_words="audio")
        assert _json(os.path.join(d, "output_text.json")) == original
        new = _json(os.path.join(d, "output.json"))
        assert new == _json(os.path.join(d, "output_audio.json"))
        assert new["text"] == original["text"] and abs(new["chunks"][0]["timestamp"][0] - 2.9) <= FRAME + 1e-6
    with pytest.raises(ValueError, match="fdb_words"):
        at.write_timing(export, fdb_words="asr")
