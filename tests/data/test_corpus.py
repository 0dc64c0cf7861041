"""Corpus manifests: validation messages, loading (channels, resampling, video) and split_long."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import soundfile as sf

from interaction_jax.data import corpus
from interaction_jax.data.episode import Episode, GradingWindow, VideoFrame, Word

SR = 8000


def tone(freq: float, seconds: float, sr: int = SR) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


@pytest.fixture()
def files(tmp_path):
    """A stereo file (user 300 Hz left, model 1 kHz right), two mono files, a frame and a words file."""
    sf.write(tmp_path / "stereo.wav", np.stack([tone(300, 1.0), tone(1000, 1.0)], 1), SR)
    sf.write(tmp_path / "u.wav", tone(300, 1.0), SR)
    sf.write(tmp_path / "m.wav", np.random.default_rng(0).uniform(-0.1, 0.1, int(0.8 * SR)), SR)
    from PIL import Image

    Image.fromarray(np.full((4, 5, 3), 200, np.uint8)).save(tmp_path / "f.png")
    (tmp_path / "w.json").write_text(json.dumps({"words": [{"speaker": "model", "text": "yo", "start": 0.2,
                                                            "end": 0.4}]}))
    return tmp_path


WORDS = [{"speaker": "user", "text": "hello", "start": 0.0, "end": 0.3},
         {"speaker": "model", "text": "hi", "start": 0.4, "end": 0.6},
         {"speaker": "other", "text": "psst", "start": 0.7, "end": 0.8}]


def write_manifest(folder, lines) -> str:
    p = folder / "corpus.jsonl"
    p.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    return str(p)


def test_stereo_and_per_speaker_load_with_resampling(files):
    path = write_manifest(files, [
        {"id": "a", "audio": "stereo.wav", "model_channel": 1, "words": WORDS,
         "video": [{"time": 0.5, "path": "f.png"}]},
        "",
        {"id": "b", "audio": {"user": "u.wav", "model": str(files / "m.wav")}, "words_file": "w.json",
         "duration": 0.9},
    ])
    a, b = corpus.read_manifest(path)
    assert a.model_channel == 1 and a.duration == pytest.approx(1.0) and b.duration == 0.9
    ep = corpus.load_conversation(a, sample_rate=16000)
    assert ep.task == "conversation" and ep.sample_rate == 16000 and ep.user_audio.size == 16000
    spec = np.abs(np.fft.rfft(ep.model_audio))  # 1 Hz bins: the model channel is the 1 kHz tone
    assert np.argmax(spec) == pytest.approx(1000, abs=2)
    assert np.argmax(np.abs(np.fft.rfft(ep.user_audio))) == pytest.approx(300, abs=2)
    assert [w.text for w in ep.user_words] == ["hello"] and ep.model_words == [Word("hi", 0.4, 0.6)]
    assert [w.text for w in ep.other_words] == ["psst"]
    assert ep.video[0].time == 0.5 and ep.video[0].image.shape == (4, 5, 3)
    assert ep.metadata["model_channel"] == 1
    swapped = corpus.load_conversation(corpus.ConversationSpec(**{**a.__dict__, "model_channel": 0}), SR)
    assert np.argmax(np.abs(np.fft.rfft(swapped.model_audio))) == pytest.approx(300, abs=2)
    epb = corpus.load_conversation(b, sample_rate=SR)
    assert epb.model_audio.size == epb.user_audio.size == int(0.9 * SR)
    assert epb.model_words == [Word("yo", 0.2, 0.4)] and epb.user_words == []
    np.testing.assert_allclose(epb.user_audio, tone(300, 0.9), atol=1e-4)


def _w(**kw):
    return [{**WORDS[0], **kw}]


BAD_LINES = [
    ({"audio": "stereo.wav", "model_channel": 1, "words": WORDS}, "field 'id': missing"),
    ({"id": "x", "audio": "stereo.wav", "model_channel": 2, "words": WORDS},
     "'model_channel': bad channel 2"),
    ({"id": "x", "audio": "stereo.wav", "words": WORDS}, "'model_channel': missing"),
    ({"id": "x", "audio": "stereo.wav", "model_channel": 0, "words": _w(start=0.5, end=0.2)},
     "'words[0].start': start 0.5 > end 0.2"),
    ({"id": "x", "audio": "stereo.wav", "model_channel": 0, "words": _w(end=3.0)},
     "'words[0].end': word 'hello' ends at 3.0 s, outside the audio"),
    ({"id": "x", "audio": "stereo.wav", "model_channel": 0, "words": _w(speaker="bob")},
     "'words[0].speaker': unknown speaker 'bob'"),
    ({"id": "x", "audio": "stereo.wav", "model_channel": 0, "words": [{"speaker": "user", "text": "a"}]},
     "'words[0].start': missing"),
    ({"id": "x", "audio": "nope.wav", "model_channel": 0, "words": WORDS}, "'audio': missing file"),
    ({"id": "x", "audio": "u.wav", "model_channel": 0, "words": WORDS},
     "is mono: a recording of both parties needs 'rttm' speaker turns"),
    ({"id": "x", "audio": {"user": "stereo.wav", "model": "m.wav"}, "words": WORDS},
     "must be mono"),
    ({"id": "x", "audio": {"user": "u.wav"}, "words": WORDS}, "needs exactly 'user' and 'model'"),
    ({"id": "x", "audio": {"user": "u.wav", "model": "m.wav"}, "model_channel": 0, "words": WORDS},
     "'model_channel': only applies to a stereo"),
    ({"id": "x", "words": WORDS}, "field 'audio': missing"),
    ({"id": "x", "audio": "stereo.wav", "model_channel": 0}, "exactly one of 'words' and 'words_file'"),
    ({"id": "x", "audio": "stereo.wav", "model_channel": 0, "words_file": "none.json"},
     "'words_file': missing file"),
    ({"id": "x", "audio": "stereo.wav", "model_channel": 0, "words": WORDS, "duration": 5},
     "'duration': 5 s is longer than the audio"),
    ({"id": "x", "audio": "stereo.wav", "model_channel": 0, "words": WORDS, "video": [{"time": 0.1}]},
     "'video[0].path'"),
    ("{not json", "not valid JSON"),
]


@pytest.mark.parametrize("line,match", BAD_LINES, ids=[m for _, m in BAD_LINES])
def test_validation_errors_name_line_and_field(files, line, match):
    ok = {"id": "ok", "audio": "stereo.wav", "model_channel": 0, "words": WORDS}
    path = write_manifest(files, [ok, line])
    with pytest.raises(ValueError, match=r"corpus\.jsonl line 2: .*" + re.escape(match)):
        corpus.read_manifest(path)


def test_duplicate_id_and_all_errors_reported(files):
    ok = {"id": "ok", "audio": "stereo.wav", "model_channel": 0, "words": WORDS}
    path = write_manifest(files, [ok, ok, {**ok, "id": "z", "model_channel": 7}])
    with pytest.raises(ValueError, match="2 problem") as e:
        corpus.read_manifest(path)
    assert "line 2: field 'id': duplicate id 'ok'" in str(e.value)
    assert "line 3: field 'model_channel'" in str(e.value)


def _long_episode() -> Episode:
    sr = 100
    words = [Word(f"w{k}", k * 1.0, k * 1.0 + 0.6) for k in range(10)]  # silence in [k+0.6, k+1)
    return Episode("long", duration=10.0, sample_rate=sr, user_audio=np.arange(1000) / 1000,
                   user_words=words[::2], model_words=words[1::2],
                   video=[VideoFrame(t, np.full((1, 1, 3), t, np.uint8)) for t in (0.0, 3.5)],
                   grading=[GradingWindow("speak", 2.0, 5.0, "w3")], task="conversation")


def test_split_long_cuts_in_silence_and_rebases():
    ep = _long_episode()
    parts = corpus.split_long(ep, 3.0)
    assert all(p.duration <= 3.0 + 1e-9 for p in parts)
    assert sum(p.duration for p in parts) == pytest.approx(10.0)
    assert sum(len(p.user_words) + len(p.model_words) for p in parts) == 10  # no word lost
    assert parts[0].duration == pytest.approx(2.8)  # the middle of the 2.6-3.0 s silence
    offset = 0.0
    for k, p in enumerate(parts):
        assert p.episode_id == f"long_part{k:03d}" and p.metadata["split"]["offset"] == pytest.approx(offset)
        for w in p.user_words + p.model_words:
            assert 0 <= w.start <= w.end <= p.duration + 1e-9
            orig = int(w.text[1:])
            assert w.start + offset == pytest.approx(orig * 1.0)
        np.testing.assert_allclose(p.user_audio[:1], ep.user_audio[int(round(offset * 100))])
        assert p.video and p.video[0].time == 0.0  # the frame on screen carries over
        offset += p.duration
    assert corpus.split_long(ep, 20.0) == [ep]


def test_split_long_hard_cut_without_silence():
    ep = Episode("talky", duration=4.0, sample_rate=100, user_words=[Word("loooong", 0.0, 4.0)])
    parts = corpus.split_long(ep, 1.5)
    assert [p.duration for p in parts] == pytest.approx([1.5, 1.5, 1.0])
    assert all(not p.user_words for p in parts)
    with pytest.raises(ValueError):
        corpus.split_long(ep, 0)
