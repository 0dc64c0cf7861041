"""prepare/inspect commands end to end on a couple of rendered episodes; tokenizer basics."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from interaction_jax.data.prepare import prepare
from interaction_jax.data.store import open_store
from interaction_jax.streams.tokenizer import NUM_CONTROL, ByteTokenizer, Control, make_tokenizer


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("prep") / "mix")
    prepare(out, task="mix", num_episodes=3, seed=5, episode_seconds=3.0)
    return out


def test_prepare_writes_a_complete_store_with_features(prepared):
    store = open_store(prepared)
    assert len(store) == 3
    ep, extras = store[0]
    assert ep.duration == 3.0 and ep.task
    assert extras["user_logmel"].shape == (1 + 3 * 16000 // 200, 80)
    manifest = json.load(open(os.path.join(prepared, "manifest.json")))
    assert manifest["metadata"]["seed"] == 5


def test_prepare_refuses_to_overwrite_and_keeps_the_old_store(prepared):
    before = open_store(prepared).raw(0)
    with pytest.raises(FileExistsError):
        prepare(prepared, task="mix", num_episodes=1, seed=99, episode_seconds=2.0)
    assert open_store(prepared).raw(0) == before


def test_prepare_overwrite_refuses_a_folder_that_is_not_a_store(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    (d / "precious.txt").write_text("precious")
    with pytest.raises(FileExistsError, match="precious.txt"):
        prepare(str(d), task="timespeak", num_episodes=1, episode_seconds=2.0, overwrite=True)
    assert (d / "precious.txt").read_text() == "precious" and os.listdir(d) == ["precious.txt"]


def test_inspect_cli_prints_stats_and_renders_png(prepared, tmp_path):
    png = tmp_path / "w.png"
    r = subprocess.run(
        [sys.executable, "-m", "interaction_jax.data.inspect", prepared, f"--png={png}"],
        capture_output=True, text=True, timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert '"episodes": 3' in r.stdout
    assert png.exists() and png.read_bytes()[:4] == b"\x89PNG"


def test_byte_tokenizer_round_trip_and_controls():
    tok = make_tokenizer(None)
    assert isinstance(tok, ByteTokenizer) and tok.vocab_size == NUM_CONTROL + 256
    ids = tok.encode("héllo")
    assert min(ids) >= NUM_CONTROL and tok.decode(ids) == "héllo"
    mixed = [Control.SPEECH_START] + tok.encode("hi") + [Control.NOTHING, Control.SPEECH_END]
    assert tok.decode(mixed) == "hi"
    assert tok.decode(np.array(mixed), keep_control=True) == "<SPEECH_START>hi<SPEECH_END>"


def test_unknown_tokenizer_is_a_clear_error():
    class T:
        tokenizer = "wordpiece"

    with pytest.raises(ValueError, match="unknown text.tokenizer"):
        make_tokenizer(T())


def test_prepare_with_worker_processes_writes_the_same_records(tmp_path):
    """Rendering in 2 spawned processes gives the same bytes, in seed order, as one process."""
    from interaction_jax.data.prepare import prepare

    spec = "mix:timespeak_typed=1,others=1"
    paths = [prepare(str(tmp_path / f"w{w}"), task=spec, num_episodes=5, seed=11, episode_seconds=3.0, workers=w)
             for w in (1, 2)]
    shards = [sorted(p.name for p in (tmp_path / f"w{w}").iterdir() if p.suffix == ".array_record") for w in (1, 2)]
    assert shards[0] == shards[1] and shards[0]
    for name in shards[0]:
        assert (tmp_path / "w1" / name).read_bytes() == (tmp_path / "w2" / name).read_bytes()
    assert paths[0].endswith("w1")
    with pytest.raises(ValueError, match="unknown task"):
        prepare(str(tmp_path / "bad"), task="mix:chess=1", num_episodes=1)
    assert not (tmp_path / "bad").exists()  # refused before anything is written
