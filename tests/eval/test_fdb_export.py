"""Full-Duplex-Bench export: sample folders written from episodes, run through a random tiny engine, and the
files FDB's scripts read (output.wav 16 kHz mono as long as the input, output.json chunks = the run's words)."""

import json
import os
import shutil

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
def inputs(tmp_path_factory):
    """Two spoken episodes (one turn-taking, one interruption) written as FDB sample folders."""
    root = str(tmp_path_factory.mktemp("fdb") / "inputs")
    eps = [tasks.generate("turntaking", 1, duration_s=SECONDS), tasks.generate("interruption", 1, duration_s=6.0),
           tasks.generate("turntaking", 0, duration_s=SECONDS)]  # seed 0 is typed: skipped (FDB is audio only)
    assert [bool(e.user_text) for e in eps] == [False, False, True]
    folders = fdb.write_fdb_inputs(eps, root)
    assert [os.path.basename(f) for f in folders] == [eps[0].episode_id, eps[1].episode_id]
    return root, eps[:2]


def test_inputs_layout(inputs):
    root, eps = inputs
    for ep in eps:
        d = os.path.join(root, ep.episode_id)
        audio, sr = sf.read(os.path.join(d, "input.wav"))
        assert sr == 16000 and audio.ndim == 1 and len(audio) == ep.num_samples
        np.testing.assert_allclose(audio, ep.user_audio, atol=1 / 32767)
        with open(os.path.join(d, "metadata.json")) as f:
            md = json.load(f)
        assert md["episode_id"] == ep.episode_id and md["task"] == ep.task
        assert [c["text"] for c in md["user_words"]] == [w.text for w in ep.user_words]
    with open(os.path.join(root, eps[1].episode_id, "interrupt.json")) as f:
        ann = json.load(f)[0]
    assert ann["timestamp"][0] == pytest.approx(eps[1].metadata["interruption_onset"], abs=1e-3)
    assert ann["interrupt"].split()[0] == next(w.text for w in eps[1].user_words
                                               if w.start >= eps[1].metadata["interruption_onset"])
    with open(os.path.join(root, eps[0].episode_id, "turn_taking.json")) as f:
        assert json.load(f)[0]["timestamp"][0] == pytest.approx(eps[0].metadata["question_ends"][0], abs=1e-3)


@pytest.fixture(scope="module")
def exported(inputs, engine, tmp_path_factory):
    root, eps = inputs
    out = str(tmp_path_factory.mktemp("fdb_out"))
    runs = fdb.export_fdb(engine, root, out, seed=0, n_iter=4)
    return out, runs


def test_export_files(inputs, exported):
    root, eps = inputs
    out, runs = exported
    assert [r.episode_id for r in runs] == sorted(e.episode_id for e in eps)
    for run in runs:
        d = os.path.join(out, run.episode_id)
        n_in = sf.info(os.path.join(root, run.episode_id, "input.wav")).frames
        wav, sr = sf.read(os.path.join(d, "output.wav"))
        assert sr == 16000 and wav.ndim == 1 and len(wav) == n_in
        lead = int(round(run.mel_start * sr))  # nothing is said before the first output micro-turn plays
        assert lead > 0 and not np.any(wav[:lead])
        with open(os.path.join(d, "output.json")) as f:
            out_json = json.load(f)
        assert set(out_json) == {"text", "chunks"}
        duration = n_in / 16000
        assert [c["text"] for c in out_json["chunks"]] == [w.text for w in run.words]
        assert out_json["text"] == " ".join(w.text for w in run.words)
        for c, w in zip(out_json["chunks"], run.words, strict=True):
            s, e = c["timestamp"]
            assert 0.0 <= s <= e <= duration + 1e-9
            assert s == pytest.approx(w.start, abs=1e-3) and e == pytest.approx(min(w.end, duration), abs=1e-3)
        # FDB's evaluators read the task annotation next to output.json
        assert os.path.exists(os.path.join(d, "metadata.json"))
    assert os.path.exists(os.path.join(out, runs[0].episode_id, "interrupt.json"))
    assert any(r.words for r in runs)  # a random model babbles: the chunk checks above were not vacuous


def test_existing_outputs_are_not_clobbered(inputs, exported, engine):
    root, _ = inputs
    out, runs = exported
    path = os.path.join(out, runs[0].episode_id, "output.json")
    before = open(path, "rb").read()
    with pytest.raises(fdb.FdbError, match="already exist"):
        fdb.export_fdb(engine, root, out)
    assert open(path, "rb").read() == before
    assert not [n for n in os.listdir(os.path.dirname(path)) if n.startswith(".")]  # no temp files left


def test_bad_inputs_name_the_sample(inputs, engine, tmp_path):
    root, eps = inputs
    bad = str(tmp_path / "bad")
    shutil.copytree(root, bad)
    sid = eps[0].episode_id
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
        fdb.write_fdb_inputs(eps, root)


def test_crash_leaves_no_partial_output(inputs, engine, tmp_path, monkeypatch):
    """A failure while writing output.json leaves neither a partial file nor a temp file behind."""
    root, eps = inputs
    one = str(tmp_path / "one")
    shutil.copytree(os.path.join(root, eps[0].episode_id), os.path.join(one, eps[0].episode_id))
    with open(os.path.join(one, eps[0].episode_id, "input.wav"), "rb") as f:
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
    d = os.path.join(one, eps[0].episode_id)
    assert not os.path.exists(os.path.join(d, "output.json"))
    assert not [n for n in os.listdir(d) if n.startswith(".")]
    with open(os.path.join(d, "input.wav"), "rb") as f:
        assert f.read() == wav_bytes  # writing beside the inputs never touches them
