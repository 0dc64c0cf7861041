"""Episode store: sharded write/read, atomic replace, crash safety, validation, pickling."""

from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest
from test_serialize import assert_same, make_episode

from interaction_jax.data import store as store_lib
from interaction_jax.data.serialize import episode_to_bytes
from interaction_jax.data.store import MANIFEST, open_store, write_store

N = 7


@pytest.fixture(scope="module")
def episodes():
    return [make_episode(i, duration=0.1) for i in range(N)]


@pytest.fixture(scope="module")
def written(tmp_path_factory, episodes):
    out = str(tmp_path_factory.mktemp("stores") / "s")
    write_store(out, episodes, records_per_shard=3, metadata={"task": "unit", "seed": 5}, progress=False)
    return out


def test_write_and_random_read_across_shards(written, episodes):
    s = open_store(written)
    m = s.manifest
    assert len(s) == N and m["num_episodes"] == N
    assert [x["num_records"] for x in m["shards"]] == [3, 3, 1]
    assert m["metadata"] == {"task": "unit", "seed": 5} and m["created"]
    assert sorted(os.listdir(written)) == sorted([x["file"] for x in m["shards"]] + [MANIFEST])
    for i in (6, 0, 3, 2, 5, -1):
        assert_same(episodes[i], s[i])
    assert isinstance(s.raw(4), bytes)
    with pytest.raises(IndexError):
        s[N]


def test_num_shards_bytes_and_extras(tmp_path, episodes):
    extras = {"user_logmel": np.ones((2, 3), np.float16)}
    recs = [episode_to_bytes(e, extras=extras) for e in episodes]
    out = write_store(str(tmp_path / "x"), recs, num_shards=2, metadata={}, progress=False)
    s = open_store(out)
    assert [x["num_records"] for x in s.manifest["shards"]] == [4, 3]
    assert s.manifest["extras"] == ["user_logmel"]
    ep, ex = s[5]  # a store with extras yields what the Grain pipeline takes
    assert ep.episode_id == "ep5" and ex["user_logmel"].dtype == np.float16
    assert open_store(out, with_extras=False)[5].episode_id == "ep5"
    assert s.episode(1).episode_id == "ep1"
    with pytest.raises(ValueError, match="sized"):
        write_store(str(tmp_path / "y"), iter(recs), num_shards=2, progress=False)


def test_progress_line(tmp_path, episodes, capsys):
    write_store(str(tmp_path / "p"), episodes, progress=2)
    err = capsys.readouterr().err
    assert "write_store: 2 episodes" in err and "episodes/s" in err and "7 episodes" in err


def test_refuses_existing_store_and_overwrite_replaces(tmp_path, episodes):
    out = str(tmp_path / "s")
    write_store(out, episodes[:2], progress=False)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        write_store(out, episodes[2:4], progress=False)
    assert open_store(out)[0].episode_id == "ep0"
    write_store(out, episodes[2:5], overwrite=True, progress=False)
    s = open_store(out)
    assert len(s) == 3 and s[0].episode_id == "ep2"
    assert sorted(os.listdir(tmp_path)) == ["s"]  # no tmp/old leftovers
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "f").write_text("x")
    with pytest.raises(FileExistsError, match="not an episode store"):
        write_store(str(tmp_path / "junk"), episodes[:1], progress=False)


def _crashing(eps, k):
    for i, e in enumerate(eps):
        if i == k:
            raise RuntimeError("boom")
        yield e


def test_crash_mid_write_leaves_nothing_complete(tmp_path, episodes):
    out = str(tmp_path / "s")
    with pytest.raises(RuntimeError, match="boom"):
        write_store(out, _crashing(episodes, 4), records_per_shard=2, progress=False)
    assert not os.path.exists(out) and os.listdir(tmp_path) == []
    write_store(out, episodes[:2], progress=False)
    with pytest.raises(RuntimeError, match="boom"):
        write_store(out, _crashing(episodes, 3), overwrite=True, progress=False)
    s = open_store(out)  # the previous store is untouched
    assert len(s) == 2 and s[1].episode_id == "ep1"
    assert sorted(os.listdir(tmp_path)) == ["s"]


def test_interrupted_dir_is_never_complete(tmp_path, episodes):
    out = tmp_path / "s"
    write_store(str(out), episodes[:3], records_per_shard=2, progress=False)
    os.remove(out / MANIFEST)  # what a crash before the manifest would look like
    assert not store_lib.is_complete_store(str(out))
    with pytest.raises(ValueError, match="not a complete episode store"):
        open_store(str(out))


def test_rejects_non_records(tmp_path):
    with pytest.raises(ValueError, match="corrupt episode record"):
        write_store(str(tmp_path / "s"), [b"garbage"], progress=False)
    with pytest.raises(TypeError, match="Episodes or serialised bytes"):
        write_store(str(tmp_path / "s"), [42], progress=False)
    assert os.listdir(tmp_path) == []


def _copy_store(src: str, dst) -> str:
    import shutil

    shutil.copytree(src, dst)
    return str(dst)


def _edit_manifest(path: str, fn) -> None:
    p = os.path.join(path, MANIFEST)
    with open(p) as f:
        m = json.load(f)
    fn(m)
    with open(p, "w") as f:
        json.dump(m, f)


def test_open_store_errors(tmp_path, written):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        open_store(str(tmp_path / "nope"))
    d = _copy_store(written, tmp_path / "a")
    os.remove(os.path.join(d, "shard-00001.array_record"))
    with pytest.raises(ValueError, match="missing shard file shard-00001"):
        open_store(d)
    d = _copy_store(written, tmp_path / "b")
    _edit_manifest(d, lambda m: m["shards"][0].update(num_records=2))
    with pytest.raises(ValueError, match="holds 3 records but the manifest says 2"):
        open_store(d)
    d = _copy_store(written, tmp_path / "c")
    _edit_manifest(d, lambda m: m.update(num_episodes=99))
    with pytest.raises(ValueError, match="num_episodes=99"):
        open_store(d)
    d = _copy_store(written, tmp_path / "d")
    _edit_manifest(d, lambda m: m.update(format="other"))
    with pytest.raises(ValueError, match="not an interaction_jax.episode_store manifest"):
        open_store(d)
    d = _copy_store(written, tmp_path / "e")
    _edit_manifest(d, lambda m: m.pop("shards"))
    with pytest.raises(ValueError, match="missing 'shards'"):
        open_store(d)
    with open(os.path.join(d, MANIFEST), "w") as f:
        f.write("{oops")
    with pytest.raises(ValueError, match="not valid JSON"):
        open_store(d)


def test_pickle_and_grain_source(written, episodes):
    import grain

    s = open_store(written)
    s[4]  # open a reader before pickling
    s2 = pickle.loads(pickle.dumps(s))
    assert len(s2) == N and all(r is None for r in s2._readers)
    assert_same(episodes[4], s2[4])
    ds = grain.MapDataset.source(s).map(lambda e: e.episode_id)
    assert list(ds) == [f"ep{i}" for i in range(N)]


def test_empty_store(tmp_path):
    s = open_store(write_store(str(tmp_path / "e"), [], progress=False))
    assert len(s) == 0


def test_overwrite_never_deletes_what_is_not_a_store(tmp_path, episodes):
    """`overwrite=True` replaces an empty folder or a store, and refuses (naming it) anything else."""
    d = tmp_path / "d"
    d.mkdir()
    (d / "precious.txt").write_text("precious")
    with pytest.raises(FileExistsError, match="precious.txt"):
        write_store(str(d), episodes[:1], overwrite=True, progress=False)
    assert (d / "precious.txt").read_text() == "precious"
    f = tmp_path / "file"
    f.write_text("keep")
    with pytest.raises(FileExistsError, match="is a file"):
        write_store(str(f), episodes[:1], overwrite=True, progress=False)
    assert f.read_text() == "keep"
    s = tmp_path / "s"
    write_store(str(s), episodes[:2], progress=False)
    (s / "notes.txt").write_text("mine")  # a store with something else in it is not replaced either
    with pytest.raises(FileExistsError, match="notes.txt"):
        write_store(str(s), episodes[:1], overwrite=True, progress=False)
    assert len(open_store(str(s))) == 2 and (s / "notes.txt").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    write_store(str(empty), episodes[:1], overwrite=True, progress=False)
    assert len(open_store(str(empty))) == 1
    assert sorted(os.listdir(tmp_path)) == ["d", "empty", "file", "s"]


def test_stale_temporaries_of_dead_writers_are_removed_live_ones_kept(tmp_path, episodes):
    import subprocess
    import sys

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    out = tmp_path / "s"
    stale = tmp_path / f"s.tmp-{dead.pid}"
    live = tmp_path / f"s.tmp-{os.getppid()}"  # our parent is running
    for t in (stale, live):
        t.mkdir()
        (t / "shard-00000.array_record").write_bytes(b"partial")
    write_store(str(out), episodes[:1], progress=False)
    assert not stale.exists() and live.exists()
    assert sorted(os.listdir(tmp_path)) == ["s", live.name]
