"""Corrupt records of a prepared store: named by shard and index, skipped with a count, or stopped on.

The stores are damaged on disk the way a bad copy or a failing disk would: one bit flipped in
one record's compressed bytes, or a shard cut short. Which bytes belong to which record is
found by walking the file's Riegeli chunk headers (the file format, not this code's reader):
ArrayRecord with group_size:1 writes one simple-records chunk per record, in order.
"""

from __future__ import annotations

import shutil
import struct

import numpy as np
import pytest

from interaction_jax.data.corrupt import SkipCorrupt
from interaction_jax.data.episode import Episode, TextEvent, Word
from interaction_jax.data.pipeline import make_iterator
from interaction_jax.data.store import CorruptRecordError, StoreError, open_store, write_store

SR = 16000
N = 6  # two shards of three records


def _episode(i: int) -> Episode:
    rng = np.random.default_rng(i)
    n = int(0.3 * SR)
    return Episode(f"ep{i}", 0.3, user_audio=(0.05 * rng.standard_normal(n)).astype(np.float32),
                   model_audio=np.zeros(n, np.float32), model_words=[Word(f"w{i}", 0.1, 0.2)],
                   user_text=[TextEvent(f"hi {i}", 0.0)], task="toy")


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("corrupt") / "clean")
    return write_store(out, [_episode(i) for i in range(N)], records_per_shard=3, progress=False)


def _record_chunks(data: bytes) -> list[tuple[int, int]]:
    """(data offset, data size) of each one-record chunk in the first 64 KiB block of a shard.

    Riegeli: a 24-byte block header at 0, then chunks of a 40-byte header (header hash, data size,
    data hash, chunk type byte + 7-byte record count, decoded size) followed by their data."""
    chunks, p = [], 24
    while p + 40 <= 65536:
        _, size, _, type_and_count, _ = struct.unpack_from("<QQQQQ", data, p)
        kind, count = chr(type_and_count & 0xFF), type_and_count >> 8
        if kind == "r" and count == 1:
            assert p + 40 + size <= 65536, "records must stay inside the first block for this helper"
            chunks.append((p + 40, size))
        elif kind not in "sr":
            break
        p += 40 + size
    return chunks


def _copy(clean: str, tmp_path, name: str) -> str:
    dst = str(tmp_path / name)
    shutil.copytree(clean, dst)
    return dst


def _flip_record(store: str, shard: int, k: int) -> None:
    """Flips one bit in the middle of record `k` of shard `shard`."""
    path = f"{store}/shard-{shard:05d}.array_record"
    data = bytearray(open(path, "rb").read())
    chunks = _record_chunks(bytes(data))
    assert len(chunks) == 3, chunks
    offset, size = chunks[k]
    data[offset + size // 2] ^= 0x10
    open(path, "wb").write(bytes(data))


def test_a_flipped_bit_names_its_shard_and_index_and_the_rest_reads(clean, tmp_path):
    path = _copy(clean, tmp_path, "flipped")
    _flip_record(path, 1, 1)  # store index 4
    s = open_store(path)  # the footer is intact: the store opens
    with pytest.raises(CorruptRecordError) as e:
        s.episode(4)
    assert "record 4 (record 1 of shard shard-00001.array_record)" in str(e.value)
    assert e.value.index == 4 and e.value.shard == "shard-00001.array_record"
    assert [s.episode(i).episode_id for i in (0, 1, 2, 3, 5)] == ["ep0", "ep1", "ep2", "ep3", "ep5"]


def test_a_truncated_shard_fails_to_open_or_is_skipped_when_allowed(clean, tmp_path, capsys):
    path = _copy(clean, tmp_path, "truncated")
    shard = f"{path}/shard-00000.array_record"
    data = open(shard, "rb").read()
    open(shard, "wb").write(data[: len(data) // 3])
    with pytest.raises(StoreError, match="shard shard-00000.array_record is unreadable"):
        open_store(path)
    s = open_store(path, allow_damaged=True)
    assert "shard-00000.array_record is unreadable" in capsys.readouterr().err
    with pytest.raises(CorruptRecordError, match=r"record 2 \(record 2 of shard shard-00000"):
        s.episode(2)
    assert s.episode(3).episode_id == "ep3"


def test_skip_warns_once_per_record_with_a_running_count(clean, tmp_path, capsys):
    path = _copy(clean, tmp_path, "skip")
    _flip_record(path, 0, 1)
    _flip_record(path, 1, 0)
    lines: list[str] = []
    src = SkipCorrupt(open_store(path), "skip", limit=5, warn=lines.append)
    assert src[1].episode_id == "ep2"  # the next readable record stands in
    assert len(lines) == 1 and "record 1 (record 1 of shard shard-00000" in lines[0]
    assert "1 corrupt records skipped so far" in lines[0]
    src[1]  # the same record again (a later epoch): no second warning, same count
    assert len(lines) == 1 and src.count == 1
    src[3]
    assert len(lines) == 2 and "2 corrupt records skipped so far" in lines[1] and src.count == 2


def test_stop_and_the_threshold_end_the_read_naming_the_record(clean, tmp_path):
    path = _copy(clean, tmp_path, "stop")
    _flip_record(path, 0, 1)
    _flip_record(path, 1, 0)
    with pytest.raises(CorruptRecordError, match=r"record 1 .*on_corrupt_record='stop'"):
        SkipCorrupt(open_store(path), "stop")[1]
    src = SkipCorrupt(open_store(path), "skip", limit=1, warn=lambda _: None)
    src[1]
    with pytest.raises(CorruptRecordError, match=r"2 corrupt records, more than data.max_corrupt_records=1"):
        src[3]


def test_the_training_pipeline_skips_a_corrupt_record_and_reports_it(clean, tmp_path, tiny_config, capsys):
    path = _copy(clean, tmp_path, "pipeline")
    _flip_record(path, 0, 2)
    kw = dict(batch_size=2, num_turns=2, process_index=0, process_count=1)
    it = make_iterator(tiny_config, open_store(path), **kw)
    batches = [next(it) for _ in range(2 * N // 2)]  # two epochs
    assert len(batches) == N
    err = capsys.readouterr().err
    assert err.count("[data] warning: skipped") == 1 and "shard-00000.array_record" in err
    stop = tiny_config.copy_and_resolve_references()
    stop.data.on_corrupt_record = "stop"
    it = make_iterator(stop, open_store(path), **kw)
    with pytest.raises(CorruptRecordError, match=r"record 2 \(record 2 of shard shard-00000"):
        for _ in range(N):
            next(it)


def test_training_skips_a_corrupt_record_counting_it_in_the_logs_and_at_the_end(clean, tmp_path):
    from conftest import config_path

    from interaction_jax.config_lib import load_config
    from interaction_jax.train.trainer import Trainer

    path = _copy(clean, tmp_path, "train")
    _flip_record(path, 1, 2)
    config = load_config(config_path("tiny.py"), [
        f"data.data_dir={path}", "data.window_micro_turns=2", "data.batch_size=2", "data.eval_num_episodes=1",
        "train.num_steps=4", "train.log_every=2", "train.eval_every=0", "train.checkpoint_every=0",
        "train.async_checkpointing=False"])
    lines: list[str] = []
    result = Trainer(config, str(tmp_path / "run"), log=lines.append).run()
    assert result.step == 4 and result.corrupt_records == 1
    assert result.history[-1]["corrupt_records_skipped"] == 1
    assert lines[-1] == "[train] finished at step 4 (1 corrupt records skipped)", lines



@pytest.mark.slow  # two worker processes start (each imports Grain and JAX)
def test_skips_in_worker_processes_are_counted_and_limited_in_the_main_process(clean, tmp_path, tiny_config, capfd):
    """data.worker_count=2: the records are skipped inside the workers, the main process counts them all."""
    path = _copy(clean, tmp_path, "workers")
    for shard, k in ((0, 1), (1, 0), (1, 2)):  # store indices 1, 3 and 5: three bad records
        _flip_record(path, shard, k)
    src = SkipCorrupt(open_store(path), "skip", limit=2)
    it = make_iterator(tiny_config, src, batch_size=2, num_turns=2, process_index=0, process_count=1, worker_count=2)
    try:
        with pytest.raises(CorruptRecordError, match=r"3 corrupt records, more than data.max_corrupt_records=2"):
            for _ in range(N // 2):  # one epoch reads every record once
                next(it)
    finally:
        it.close()
    assert src.bad == {1, 3, 5}
    err = capfd.readouterr().err  # the workers' stderr too: they print no warnings of their own
    warned = [line for line in err.splitlines() if "[data] warning: skipped" in line]
    assert len(warned) == 2, err  # the first two skipped with a running count, the third over the limit
    assert [line.endswith(f"({c} corrupt records skipped so far)") for c, line in enumerate(warned, 1)] == [True] * 2
