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
def test_two_process_eval_summaries_are_skipped_with_one_line(tmp_path):
    """On a 2-process mesh an evaluation writes its losses and skips the audio/timeline summaries
    with one logged line per process (the summary forward is verified on one process only), and
    both processes finish with the same eval loss."""
    outs = _two_processes("summaries", config_path("tiny.py"), str(tmp_path / "two"))
    for o in outs:
        assert len(o["logs"]) == 1 and "eval summaries skipped" in o["logs"][0], o["logs"]
        assert o["written"] == []
    assert outs[0]["eval_loss"] == outs[1]["eval_loss"] and np.isfinite(outs[0]["eval_loss"])
