"""An FDB export as a corpus (mono mix, RTTM, STM, CTM, manifest), read back with parsers written here from the
format definitions and checked against the episode's own word times and the model's audio timing."""

import json
import os
import stat

import numpy as np
import pytest
import soundfile as sf

from interaction_jax.eval import audio_timing, corpus_formats
from interaction_jax.eval.fdb import FdbError
from interaction_jax.features.audio import save_wav

SR = 16000
DUR = 6.0
FRAME = 0.02
USER = [("can", 0.2, 0.5), ("you", 0.55, 0.8), ("help", 0.85, 1.3), ("now", 2.2, 2.6)]  # two utterances
OTHER = [("hey", 3.6, 3.9)]
MODEL_AUDIO = [(1.6, 2.9), (4.2, 4.5)]  # the second segment has no text word (babble)
MODEL_TEXT = [("sure", 1.45, 1.7), ("thing", 1.8, 2.1)]


# ---- parsers from the format definitions -----------------------------------------------------------
def parse_rttm(text):
    """SPEAKER <file> <chan> <onset> <dur> <NA> <NA> <speaker> <NA> <NA>."""
    out = []
    for line in text.splitlines():
        f = line.split()
        assert len(f) == 10 and f[0] == "SPEAKER", line
        assert f[5] == f[6] == f[8] == f[9] == "<NA>", line
        onset, dur = float(f[3]), float(f[4])
        assert onset >= 0 and dur > 0, line
        out.append({"file": f[1], "chan": f[2], "start": onset, "end": onset + dur, "spk": f[7]})
    return out


def parse_ctm(text):
    """<file> <chan> <start> <dur> <word> [<confidence>]."""
    out = []
    for line in text.splitlines():
        f = line.split()
        assert len(f) in (5, 6), line
        out.append({"file": f[0], "chan": f[1], "start": float(f[2]), "dur": float(f[3]), "word": f[4]})
    return out


def parse_stm(text):
    """<file> <chan> <speaker> <start> <end> [<label>] <transcript...>."""
    out = []
    for line in text.splitlines():
        if line.startswith(";;"):
            continue
        f = line.split()
        assert len(f) >= 5, line
        rest = f[5:]
        if rest and rest[0].startswith("<") and rest[0].endswith(">"):
            rest = rest[1:]
        start, end = float(f[3]), float(f[4])
        assert end >= start, line
        out.append({"file": f[0], "chan": f[1], "spk": f[2], "start": start, "end": end, "words": rest})
    return out


def _tone(bursts, level=0.3, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(int(DUR * SR)) / SR
    x = rng.normal(0.0, 1e-4, t.size)
    for a, b in bursts:
        m = (t >= a) & (t < b)
        x[m] += level * np.sin(2 * np.pi * 200 * t[m])
    return x.astype(np.float32)


def _chunks(ws):
    return [{"text": w, "timestamp": [a, b]} for w, a, b in ws]


def _write_sample(d, *, episode=True, level=0.3):
    os.makedirs(d)
    save_wav(os.path.join(d, "input.wav"), _tone([(a, b) for _, a, b in USER + OTHER], level, 1), SR)
    save_wav(os.path.join(d, "output.wav"), _tone(MODEL_AUDIO, level, 2), SR)
    with open(os.path.join(d, "output.json"), "w") as f:
        json.dump({"text": " ".join(w for w, _, _ in MODEL_TEXT), "chunks": _chunks(MODEL_TEXT)}, f)
    with open(os.path.join(d, "turn_taking.json"), "w") as f:
        json.dump([{"text": "can you help", "timestamp": [1.3, 2.2]}], f)
    if episode:
        with open(os.path.join(d, "episode.json"), "w") as f:
            json.dump({"user_words": _chunks(USER), "other_words": _chunks(OTHER), "grading": []}, f)
    else:  # an FDB sample of its own: transcription.json only
        with open(os.path.join(d, "transcription.json"), "w") as f:
            json.dump([{"speaker": 0, "item": _chunks(USER)}, {"speaker": 1, "item": _chunks(OTHER)}], f)


@pytest.fixture()
def export(tmp_path):
    root = str(tmp_path / "OUT")
    _write_sample(os.path.join(root, "smooth_turn_taking", "s1"))
    _write_sample(os.path.join(root, "smooth_turn_taking", "s2"), episode=False, level=0.7)  # mix peaks > 0.9
    audio_timing.write_timing(root)
    return root


def _read(path):
    with open(path) as f:
        return f.read()


def test_corpus_files_parse_and_match_the_episode_and_the_audio(export, tmp_path):
    out = str(tmp_path / "CORPUS")
    manifest = corpus_formats.write_corpus(export, out)
    assert [m["id"] for m in manifest] == ["smooth_turn_taking-s1", "smooth_turn_taking-s2"]
    timing = json.loads(_read(os.path.join(export, "smooth_turn_taking", "s1", "timing.json")))
    words_audio = [(w["text"], *w["timestamp"]) for w in timing["words_audio"]]
    assert [w for w, _, _ in words_audio] == ["sure", "thing"]
    for m in manifest:
        fid = m["id"]
        # mono mix: one channel, 16 kHz, the input's length, input + output (scaled down only past 0.9)
        mix, sr = sf.read(os.path.join(out, m["audio"]), dtype="float32")
        d = os.path.join(export, "smooth_turn_taking", m["sample"])
        inp, _ = sf.read(os.path.join(d, "input.wav"), dtype="float32")
        outp, _ = sf.read(os.path.join(d, "output.wav"), dtype="float32")
        assert mix.ndim == 1 and sr == SR and mix.size == inp.size and m["channels"] == 1
        if m["sample"] == "s1":
            np.testing.assert_allclose(mix, inp + outp, atol=2 / 32768)
        else:
            assert np.abs(inp + outp).max() > 0.9 and np.abs(mix).max() <= 0.9 + 1 / 32768
            np.testing.assert_allclose(mix, (inp + outp) * 0.9 / np.abs(inp + outp).max(), atol=2 / 32768)

        rttm = parse_rttm(_read(os.path.join(out, m["rttm"])))
        ctm = parse_ctm(_read(os.path.join(out, m["ctm"])))
        stm = parse_stm(_read(os.path.join(out, m["stm"])))
        assert {r["file"] for r in rttm + ctm + stm} == {fid} and {r["chan"] for r in rttm + ctm + stm} == {"1"}

        # CTM: every word of the episode (user, other) and the model's audio-timed words, at their times
        expected = sorted([(w, a, b) for w, a, b in USER + OTHER] + words_audio, key=lambda x: x[1])
        assert [c["word"] for c in ctm] == [w for w, _, _ in expected]
        for c, (_, a, b) in zip(ctm, expected, strict=True):
            assert c["start"] == pytest.approx(a, abs=5e-4) and c["dur"] == pytest.approx(b - a, abs=1e-3)

        # STM: utterances split at gaps >= 0.5 s, start/end = first/last word, by start time
        assert [(s["spk"], s["words"]) for s in stm] == [
            ("user", ["can", "you", "help"]), ("model", ["sure", "thing"]), ("user", ["now"]), ("other", ["hey"])]
        assert [(s["start"], s["end"]) for s in stm if s["spk"] == "user"] == [(0.2, 1.3), (2.2, 2.6)]
        model_stm = next(s for s in stm if s["spk"] == "model")
        assert abs(model_stm["start"] - 1.6) <= FRAME and abs(model_stm["end"] - 2.9) <= FRAME

        # RTTM: user/other turns = the STM utterances; model turns = its speech in output.wav (babble included)
        by_spk = {s: [(r["start"], r["end"]) for r in rttm if r["spk"] == s] for s in ("user", "other", "model")}
        assert by_spk["user"] == [pytest.approx((0.2, 1.3)), pytest.approx((2.2, 2.6))]
        assert by_spk["other"] == [pytest.approx((3.6, 3.9))]
        assert len(by_spk["model"]) == 2
        for (a, b), (ea, eb) in zip(by_spk["model"], MODEL_AUDIO, strict=True):
            assert abs(a - ea) <= FRAME + 1e-3 and abs(b - eb) <= FRAME + 1e-3
        assert [r["start"] for r in rttm] == sorted(r["start"] for r in rttm)

        # manifest words: the corpus reader's schema, the same words as the CTM
        assert [(w["speaker"], w["text"]) for w in m["words"]] == [
            ("user", "can"), ("user", "you"), ("user", "help"), ("model", "sure"), ("model", "thing"),
            ("user", "now"), ("other", "hey")]
        assert m["duration"] == DUR and m["task"] == "smooth_turn_taking"

    lines = [json.loads(x) for x in _read(os.path.join(out, "manifest.jsonl")).splitlines()]
    assert lines == json.loads(json.dumps(manifest))
    for kind in ("rttm", "stm", "ctm"):
        assert _read(os.path.join(out, f"all.{kind}")) == "".join(
            _read(os.path.join(out, m[kind])) for m in manifest)
    assert stat.S_IMODE(os.stat(os.path.join(out, "all.rttm")).st_mode) == 0o644
    assert stat.S_IMODE(os.stat(os.path.join(out, "audio")).st_mode) == 0o755


def test_text_stream_model_words_and_no_overwrite(export, tmp_path):
    out = str(tmp_path / "C")
    corpus_formats.write_corpus(os.path.join(export, "smooth_turn_taking"), out, model_words="text")
    ctm = parse_ctm(_read(os.path.join(out, "ctm", "smooth_turn_taking-s1.ctm")))
    model = [c for c in ctm if c["word"] in ("sure", "thing")]
    assert [(c["start"], c["dur"]) for c in model] == [(1.45, pytest.approx(0.25)), (1.8, pytest.approx(0.3))]
    rttm = parse_rttm(_read(os.path.join(out, "rttm", "smooth_turn_taking-s1.rttm")))
    assert [(r["start"], r["end"]) for r in rttm if r["spk"] == "model"] == [(1.45, pytest.approx(2.1))]
    with pytest.raises(FdbError, match="not empty"):
        corpus_formats.write_corpus(export, out)
    with pytest.raises(ValueError, match="model_words"):
        corpus_formats.write_corpus(export, out, model_words="asr", overwrite=True)


def test_words_with_spaces_are_one_token_and_empty_turns_are_skipped():
    from interaction_jax.data.episode import Word

    assert corpus_formats.ctm_lines("f", [Word("new york", 1.0, 1.5), Word(" ", 2.0, 2.1)]) == [
        "f 1 1.000 0.500 new_york"]
    assert corpus_formats.rttm_lines("f", [("user", 1.0, 1.0, []), ("model", 0.5, 0.75, [])]) == [
        "SPEAKER f 1 0.500 0.250 <NA> <NA> model <NA> <NA>"]


def test_sample_without_transcripts_gets_user_turns_from_its_audio(export, tmp_path):
    d = os.path.join(export, "smooth_turn_taking", "s2")
    os.remove(os.path.join(d, "transcription.json"))
    c = corpus_formats.sample_corpus(d, "smooth_turn_taking")
    user = [(a, b) for s, a, b, _ in c["turns"] if s == "user"]
    # the VAD of input.wav: all its voices, bursts closer than the hangover merged
    assert len(user) == 3 and abs(user[0][0] - 0.2) <= FRAME and abs(user[0][1] - 1.3) <= FRAME
    assert abs(user[-1][0] - 3.6) <= FRAME and abs(user[-1][1] - 3.9) <= FRAME
    assert not [u for u in c["utterances"] if u[0] == "user"]
