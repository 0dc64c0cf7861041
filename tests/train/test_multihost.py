"""Two `jax.distributed` processes on 127.0.0.1 (gloo) train like one process and share checkpoints."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
from conftest import config_path

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "multihost_worker.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _result(stdout: str) -> dict:
    return json.loads([ln for ln in stdout.splitlines() if ln.startswith("RESULT ")][-1][7:])


def _two_processes(mode, cfg, run_dir) -> list[dict]:
    port = _free_port()
    procs = [subprocess.Popen([sys.executable, WORKER, mode, cfg, run_dir, str(port), str(i)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    outs = []
    for p in procs:
        try:
            out, err = p.communicate(timeout=900)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        assert p.returncode == 0, out[-2000:] + err[-4000:]
        outs.append(_result(out))
    return sorted(outs, key=lambda o: o["process"])


@pytest.mark.slow
def test_two_process_training_matches_single_process(tmp_path):
    cfg = config_path("tiny.py")
    run_dir = str(tmp_path / "two")
    outs = _two_processes("train", cfg, run_dir)
    assert [o["devices"] for o in outs] == [8, 8] and sorted(o["process"] for o in outs) == [0, 1]
    assert outs[0]["losses"] == outs[1]["losses"]  # both processes see the same global loss
    r = subprocess.run(
        [sys.executable, WORKER, "reference", cfg, str(tmp_path / "one"), run_dir],
        capture_output=True, text=True, timeout=900,
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    ref = _result(r.stdout)
    np.testing.assert_allclose(outs[0]["losses"], ref["losses"], rtol=1e-5)
    assert ref["restored_step"] == 3 and ref["restored_max_diff"] < 1e-4


@pytest.mark.slow
def test_two_process_eval_summaries(tmp_path):
    """Eval summaries on a 2-process mesh: process 0 writes the audio and timeline, process 1 writes
    nothing, nothing fails (the old code's device_get of the sharded parameters did), and both
    processes read the same replicated predictions."""
    outs = _two_processes("summaries", config_path("tiny.py"), str(tmp_path / "two"))
    assert [o["logs"] for o in outs] == [[], []], outs[0]["logs"] + outs[1]["logs"]  # no "summaries skipped"
    assert [w[0] for w in outs[0]["written"]] == ["eval/generated_speech", "eval/timeline"]
    assert outs[1]["written"] == []
    assert outs[0]["written"][0][1] > 0 and outs[0]["written"][0][2]  # some audio, all finite
    assert outs[0]["text"] == outs[1]["text"] and outs[0]["mel"] == outs[1]["mel"]
