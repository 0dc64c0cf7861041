"""Full-Duplex-Bench export: task roots written from episodes, run through a random tiny engine, checked the way
FDB's own readers read them (one root per task, input.wav beside output.wav, output.json after the interruption,
16 kHz, output as long as input, files readable by other users)."""

import json
import os
import shutil
import stat

import numpy as np
import pytest
import soundfile as sf

from interaction_jax.data import tasks
from interaction_jax.eval import fdb

SECONDS = 3.0


@pytest.fixture(scope="module")
def engine(tiny_config):
    from interaction_jax.inference.engine import StreamEngine

    return StreamEngine(tiny_config, slots=2)


@pytest.fixture(scope="module")
def episodes():
    """One turn-taking and one interruption episode (spoken), a typed one and a talking-to-others one (3 s of it:
    background speech only)."""
    eps = [tasks.generate("turntaking", 1, duration_s=SECONDS), tasks.generate("interruption", 1, duration_s=6.0),
           tasks.generate("turntaking", 0, duration_s=SECONDS), tasks.generate("others", 1, duration_s=SECONDS)]
    assert [bool(e.user_text) for e in eps] == [False, False, True, False]
    assert eps[1].metadata["interruption_onset"] is not None
    assert eps[3].metadata["segments"] == ["background"] and eps[3].other_words and not eps[3].user_words
    return eps


@pytest.fixture(scope="module")
def exported(episodes, engine, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("fdb") / "OUT")
    runs = fdb.export_fdb_tree(engine, out, episodes=episodes, seed=0, n_iter=4)
    return out, runs


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_one_root_per_task_holding_only_its_samples(episodes, exported):
    out, runs = exported
    tt, ui, bg = episodes[0], episodes[1], episodes[3]
    # typed: no FDB task; the audio timing summary lies beside the task roots, never in one
    roots = ["background_speech", "smooth_turn_taking", "user_interruption"]
    assert sorted(os.listdir(out)) == sorted([*roots, "timing_summary.json"])
    assert sorted(runs) == roots
    for task, ep in (("smooth_turn_taking", tt), ("user_interruption", ui), ("background_speech", bg)):
        assert os.listdir(os.path.join(out, task)) == [ep.episode_id]
        d = os.path.join(out, task, ep.episode_id)
        v15 = ["clean_input.wav", "clean_input.json", "input.json", "metadata.json", "clean_output.wav",
               "clean_output.json"] if task != "smooth_turn_taking" else []  # turn-taking has no clean pair
        assert sorted(os.listdir(d)) == sorted({"input.wav", "output.wav", "output.json", "transcription.json",
                                                "episode.json", fdb.FDB_TASKS[task], "timing.json",
                                                "output_audio.json", *v15})
        assert fdb.detect_task(os.path.join(out, task)) == task


def test_layout_as_fdb_readers_read_it(episodes, exported):
    out, runs = exported
    # eval_smooth_turn_taking / eval_pause_handling: every entry of the root is a sample folder with output.json
    root = os.path.join(out, "smooth_turn_taking")
    for name in os.listdir(root):
        d = os.path.join(root, name)
        assert os.path.isdir(d)
        with open(os.path.join(d, "turn_taking.json")) as f:
            t0 = json.load(f)[0]["timestamp"][0]
        assert t0 == pytest.approx(episodes[0].metadata["question_ends"][0], abs=1e-3)
        with open(os.path.join(d, "output.json")) as f:
            chunks = json.load(f)["chunks"]
        run = runs["smooth_turn_taking"][0]
        assert [c["text"] for c in chunks] == [w.text for w in run.words if w.start < run.duration]
    # eval_user_interruption (os.walk: every sub-folder has output.json and interrupt.json) and asr.py's crop
    root = os.path.join(out, "user_interruption")
    for parent, dirs, _ in os.walk(root):
        for name in dirs:
            d = os.path.join(parent, name)
            with open(os.path.join(d, "interrupt.json")) as f:
                ann = json.load(f)[0]
            assert set(ann) == {"context", "interrupt", "timestamp"}
            assert ann["timestamp"][0] == pytest.approx(episodes[1].metadata["interruption_onset"], abs=1e-3)
            end = ann["timestamp"][1]
            with open(os.path.join(d, "output.json")) as f:
                o = json.load(f)
            assert set(o) == {"text", "chunks"}
            run = runs["user_interruption"][0]
            kept = [w for w in run.words if end <= w.start < run.duration]
            assert [c["text"] for c in o["chunks"]] == [w.text for w in kept]  # only words after the interrupt
            assert o["text"] == " ".join(w.text for w in kept)
            assert all(c["timestamp"][0] >= end for c in o["chunks"])  # times stay absolute (asr.py adds offset)
    # get_timing.py: folders with input.wav + output.wav; 16 kHz mono, output as long as the input
    for task, ep in (("smooth_turn_taking", episodes[0]), ("user_interruption", episodes[1])):
        d = os.path.join(out, task, ep.episode_id)
        x, sr_in = sf.read(os.path.join(d, "input.wav"))
        y, sr_out = sf.read(os.path.join(d, "output.wav"), dtype="int16")
        assert sr_in == sr_out == 16000 and x.ndim == y.ndim == 1 and len(y) == len(x) == ep.num_samples
        run = runs[task][0]
        lead = int(round(run.mel_start * 16000))  # nothing is said before the first output micro-turn plays
        assert lead > 0 and not np.any(y[:lead])
        assert np.any(y) and np.abs(y.astype(np.int32)).max() < 32767  # random-init noise is limited, not clipped
        with open(os.path.join(d, "transcription.json")) as f:  # FDB's format: [{"speaker", "item": [...]}]
            tr = json.load(f)
        assert tr[0]["speaker"] == 0 and [c["text"] for c in tr[0]["item"]] == [w.text for w in ep.user_words]
        assert all(set(c) == {"text", "timestamp"} for s in tr for c in s["item"])
        with open(os.path.join(d, "episode.json")) as f:
            assert json.load(f)["episode_id"] == ep.episode_id
        assert os.path.exists(os.path.join(d, "metadata.json")) == (task == "user_interruption")  # v1.5's file
        for name in os.listdir(d):
            assert _mode(os.path.join(d, name)) == 0o644, name
        assert _mode(d) == 0o755
    assert any(r.words for rs in runs.values() for r in rs)  # a random model babbles: chunk checks not vacuous


def _words(obj):
    return [(c["text"], c["timestamp"][0]) for c in obj["chunks"]]


def test_v15_clean_pair_as_its_readers_read_it(episodes, exported):
    """FDB v1.5: clean_input.wav = the input without the interruption; the four transcripts eval_behavior.py
    opens; metadata.json's keys and event window; clean_output.wav/json beside output.wav (general_before_after)."""
    out, _ = exported
    ep = episodes[1]
    onset = ep.metadata["interruption_onset"]
    d = os.path.join(out, "user_interruption", ep.episode_id)
    x, sr = sf.read(os.path.join(d, "input.wav"), dtype="int16")
    c, sr_c = sf.read(os.path.join(d, "clean_input.wav"), dtype="int16")
    k = int(round(onset * 16000))
    assert sr == sr_c == 16000 and c.ndim == 1 and len(c) == len(x) == ep.num_samples
    np.testing.assert_array_equal(c[:k], x[:k])  # the context is untouched
    assert not c[k:].any() and np.abs(x[k:].astype(np.int32)).max() > 300  # the interruption is gone
    with open(os.path.join(d, "metadata.json")) as f:
        md = json.load(f)
    with open(os.path.join(d, "interrupt.json")) as f:
        ann = json.load(f)[0]
    assert set(md) == {"context_text", "current_turn_text", "timestamps"}
    assert md["timestamps"] == ann["timestamp"] and md["timestamps"][0] == pytest.approx(onset, abs=1e-3)
    assert md["current_turn_text"] == " ".join(w.text for w in ep.user_words if w.start >= onset)
    assert md["context_text"] == " ".join(w.text for w in ep.user_words if w.start < onset)
    for name in ("input.json", "clean_input.json", "output.json", "clean_output.json"):  # eval_behavior.py's four
        with open(os.path.join(d, name)) as f:
            obj = json.load(f)
        assert set(obj) == {"text", "chunks"} and obj["text"] == " ".join(t for t, _ in _words(obj)), name
        if name == "input.json":
            assert _words(obj) == [(w.text, pytest.approx(w.start, abs=1e-3)) for w in ep.user_words]
        if name == "clean_input.json":
            assert _words(obj) == [(w.text, pytest.approx(w.start, abs=1e-3)) for w in ep.user_words
                                   if w.start < onset]
    y, sr_y = sf.read(os.path.join(d, "clean_output.wav"), dtype="int16")
    assert sr_y == 16000 and y.ndim == 1 and len(y) == len(c) and np.any(y)
    with open(os.path.join(d, "clean_output.json")) as f:
        assert all(0 <= s <= ep.duration for _, s in _words(json.load(f)))
    for name in ("clean_input.wav", "clean_output.wav", "clean_output.json", "metadata.json", "input.json"):
        assert _mode(os.path.join(d, name)) == 0o644, name


def test_background_speech_pair_is_the_input_without_the_third_voice(episodes, exported):
    """An `others` sample: clean_input.wav is input.wav minus the background speech (the episode keeps it apart),
    metadata.json's window is that speech's span, and the model ran a second time on the clean input."""
    out, runs = exported
    ep = episodes[3]
    d = os.path.join(out, "background_speech", ep.episode_id)
    x = sf.read(os.path.join(d, "input.wav"), dtype="float32")[0]
    c, sr = sf.read(os.path.join(d, "clean_input.wav"), dtype="float32")
    assert sr == 16000 and len(c) == len(x) == ep.num_samples
    assert np.abs(c - (ep.user_audio - ep.other_audio)).max() <= 1.0 / 32768 + 1e-7  # 16-bit PCM of the difference
    spoken = slice(int(ep.other_words[0].start * 16000) + 800, int(ep.other_words[-1].end * 16000))
    assert np.abs(c[spoken]).max() < 0.02 < np.abs(x[spoken]).max()  # the noise floor is all that is left
    with open(os.path.join(d, "metadata.json")) as f:
        md = json.load(f)
    assert md["timestamps"] == [pytest.approx(ep.other_words[0].start, abs=1e-3),
                                pytest.approx(ep.other_words[-1].end, abs=1e-3)]
    for name, words in (("input.json", ep.other_words), ("clean_input.json", [])):
        with open(os.path.join(d, name)) as f:
            assert [t for t, _ in _words(json.load(f))] == [w.text for w in words], name
    y, sr_y = sf.read(os.path.join(d, "clean_output.wav"), dtype="int16")
    assert sr_y == 16000 and len(y) == len(c) and np.any(y)
    with open(os.path.join(d, "output.json")) as f:  # v1.5's ASR keeps every word: no crop here
        run = runs["background_speech"][0]
        assert [t for t, _ in _words(json.load(f))] == [w.text for w in sorted(run.words, key=lambda w: w.start)
                                                         if w.start < run.duration]
    for name in os.listdir(d):
        assert _mode(os.path.join(d, name)) == 0o644, name


def test_export_times_the_model_speech_from_its_audio(episodes, exported, tmp_path):
    """timing.json of a real export: VAD of the Griffin-Lim output, the run's words beside their audio times."""
    from interaction_jax.eval import corpus_formats

    out, runs = exported
    for task, ep in (("smooth_turn_taking", episodes[0]), ("user_interruption", episodes[1])):
        d = os.path.join(out, task, ep.episode_id)
        with open(os.path.join(d, "timing.json")) as f:
            t = json.load(f)
        run = runs[task][0]
        assert [w["text"] for w in t["words_text"]] == [w.text for w in sorted(run.words, key=lambda w: w.start)]
        assert all(s[0] >= run.mel_start - 0.02 for s in t["output_speech"])  # no speech before output plays
        texts = [w["text"] for w in t["words_audio"]]
        assert len(texts) <= len(t["words_text"]) and set(texts) <= {w["text"] for w in t["words_text"]}
        assert set(t["metrics"]) == {"audio", "text"}
        assert ("stop_latency_s" in t["metrics"]["audio"]) == (task == "user_interruption")
        with open(os.path.join(d, "output_audio.json")) as f:
            oa = json.load(f)
        assert all(c["timestamp"][0] >= t["output_json_after_s"] for c in oa["chunks"])
    with open(os.path.join(out, "timing_summary.json")) as f:
        assert sorted(json.load(f)) == ["background_speech", "smooth_turn_taking", "user_interruption"]
    manifest = corpus_formats.write_corpus(out, str(tmp_path / "corpus"))
    ep = episodes[1]
    m = next(m for m in manifest if m["sample"] == ep.episode_id)
    user = [(w["text"], w["start"]) for w in m["words"] if w["speaker"] == "user"]
    assert user == [(w.text, pytest.approx(w.start, abs=1e-3)) for w in ep.user_words]
    with open(tmp_path / "corpus" / m["ctm"]) as f:
        assert len(f.read().splitlines()) == len([w for w in m["words"] if w["text"].strip()])


def test_backchannel_roots_need_folders_0_to_n(exported, tmp_path):
    out, _ = exported
    src = os.path.join(out, "smooth_turn_taking")
    sid = os.listdir(src)[0]
    bc = tmp_path / "icc"
    for name in ("0", "1"):
        os.makedirs(bc / name)
        shutil.copy(os.path.join(src, sid, "input.wav"), bc / name / "input.wav")
    assert fdb.detect_task(str(bc)) == "backchannel"
    os.rename(bc / "1", bc / "7")
    with pytest.raises(fdb.FdbError, match=r"backchannel sample folders must be named 0\.\.1.*'7'"):
        fdb.detect_task(str(bc))
    named = tmp_path / "backchannel"
    shutil.copytree(bc, named)
    os.rename(named / "0", named / "a")
    with pytest.raises(fdb.FdbError, match="must be named"):
        fdb.detect_task(str(named))


def test_mixed_or_unannotated_roots_are_refused(exported, tmp_path, engine):
    out, _ = exported
    mixed = tmp_path / "mixed"
    for task in ("smooth_turn_taking", "user_interruption"):
        for sid in os.listdir(os.path.join(out, task)):
            shutil.copytree(os.path.join(out, task, sid), mixed / sid)
    with pytest.raises(fdb.FdbError, match="not one FDB task root"):
        fdb.export_fdb(engine, str(mixed), str(tmp_path / "o"))
    named = tmp_path / "user_interruption"
    shutil.copytree(mixed, named)
    with pytest.raises(fdb.FdbError, match="1 samples of the user_interruption root .* have no interrupt.json"):
        fdb.export_fdb(engine, str(named), str(tmp_path / "o"))
    assert not os.path.exists(tmp_path / "o")


def test_existing_outputs_are_not_clobbered(exported, engine):
    out, runs = exported
    root = os.path.join(out, "smooth_turn_taking")
    path = os.path.join(root, runs["smooth_turn_taking"][0].episode_id, "output.json")
    before = open(path, "rb").read()
    with pytest.raises(fdb.FdbError, match="already exist"):
        fdb.export_fdb(engine, root)
    assert open(path, "rb").read() == before
    assert not [n for n in os.listdir(os.path.dirname(path)) if n.startswith(".")]  # no temp files left


def test_bad_inputs_name_the_sample(exported, episodes, engine, tmp_path):
    out, _ = exported
    bad = str(tmp_path / "smooth_turn_taking")
    shutil.copytree(os.path.join(out, "smooth_turn_taking"), bad)
    sid = episodes[0].episode_id
    with open(os.path.join(bad, sid, "input.wav"), "wb") as f:
        f.write(b"RIFF garbage, not a wav file")
    with pytest.raises(fdb.FdbError, match=f"sample '{sid}'.*cannot decode"):
        fdb.export_fdb(engine, bad, str(tmp_path / "out"))
    os.remove(os.path.join(bad, sid, "input.wav"))
    with pytest.raises(fdb.FdbError, match=f"sample '{sid}': no input.wav"):
        fdb.export_fdb(engine, bad, str(tmp_path / "out"))
    assert not os.path.exists(tmp_path / "out")  # nothing was written
    os.makedirs(tmp_path / "empty")
    with pytest.raises(fdb.FdbError, match="no sample folders"):
        fdb.export_fdb(engine, str(tmp_path / "empty"))
    with pytest.raises(fdb.FdbError, match="exists"):  # inputs are not clobbered either
        fdb.write_fdb_inputs(episodes, out)


def test_bad_clean_input_fails_before_any_run(exported, episodes, engine, tmp_path):
    out, _ = exported
    bad = tmp_path / "user_interruption"
    shutil.copytree(os.path.join(out, "user_interruption"), bad)
    sid = episodes[1].episode_id
    (bad / sid / "clean_input.wav").write_bytes(b"RIFF garbage, not a wav file")
    with pytest.raises(fdb.FdbError, match=f"sample '{sid}'.*cannot decode"):
        fdb.export_fdb(engine, str(bad), str(tmp_path / "out"))
    assert not os.path.exists(tmp_path / "out")


def test_crash_leaves_no_partial_output(exported, episodes, engine, tmp_path, monkeypatch):
    """A failure while writing output.json leaves neither a partial file nor a temp file behind."""
    out, _ = exported
    sid = episodes[0].episode_id
    one = str(tmp_path / "smooth_turn_taking")
    os.makedirs(os.path.join(one, sid))
    for name in ("input.wav", "turn_taking.json"):
        shutil.copy(os.path.join(out, "smooth_turn_taking", sid, name), os.path.join(one, sid, name))
    with open(os.path.join(one, sid, "input.wav"), "rb") as f:
        wav_bytes = f.read()
    real_dump = json.dump

    def dump_then_crash(obj, f, **kw):
        if "chunks" in obj:
            f.write('{"text": "half')
            raise OSError("disk full")
        return real_dump(obj, f, **kw)

    monkeypatch.setattr(fdb.json, "dump", dump_then_crash)
    with pytest.raises(OSError, match="disk full"):
        fdb.export_fdb(engine, one, n_iter=2, log=False)
    d = os.path.join(one, sid)
    assert not os.path.exists(os.path.join(d, "output.json"))
    assert not [n for n in os.listdir(d) if n.startswith(".")]
    with open(os.path.join(d, "input.wav"), "rb") as f:
        assert f.read() == wav_bytes  # writing beside the inputs never touches them


def test_v15_interruption_root_with_metadata_only(exported, engine, tmp_path):
    """FDB v1.5's own user_interruption samples have metadata.json (`timestamps`) and no interrupt.json: read as
    FDB's interruption script reads them, output.json keeps the words from `timestamps[1]` on."""
    out, _ = exported
    src_root = os.path.join(out, "user_interruption")
    sid = os.listdir(src_root)[0]
    end = 1.0  # earlier than the episode's own interruption end, so the cut is this file's, not interrupt.json's
    root = tmp_path / "v15" / "user_interruption"
    (root / sid).mkdir(parents=True)
    shutil.copy(os.path.join(src_root, sid, "input.wav"), root / sid / "input.wav")
    with open(root / sid / "metadata.json", "w") as f:
        json.dump({"context_text": "a b", "current_turn_text": "c d", "timestamps": [0.5, end]}, f)
    assert fdb.detect_task(str(root)) == "user_interruption"
    assert fdb.read_annotation(str(root / sid), "user_interruption") == [
        {"context": "a b", "interrupt": "c d", "timestamp": [0.5, end]}]
    runs = fdb.export_fdb(engine, str(root), str(tmp_path / "o"), seed=0, n_iter=4, log=False)
    with open(tmp_path / "o" / sid / "output.json") as f:
        kept = _words(json.load(f))
    expected = [w for w in runs[0].words if w.start >= end]
    assert 0 < len(expected) < len(runs[0].words)  # the cut keeps some words and drops some
    assert [t for t, _ in kept] == [w.text for w in expected]
    assert all(s >= end for _, s in kept)
    # a root not named after the task does not claim v1.5's shared metadata.json as an interruption annotation
    other = tmp_path / "unnamed"
    shutil.copytree(root, other)
    with pytest.raises(fdb.FdbError, match="not one FDB task root"):
        fdb.detect_task(str(other))
    # a malformed v1.5 annotation is one clear error
    with open(root / sid / "metadata.json", "w") as f:
        json.dump({"context_text": "a"}, f)
    with pytest.raises(fdb.FdbError, match="expected FDB v1.5 metadata"):
        fdb.read_annotation(str(root / sid), "user_interruption")
