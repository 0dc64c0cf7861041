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
    """Both workers' output goes to files, not pipes (a worker blocked on a full pipe while the other
    is read never reaches the distributed shutdown barrier), and the workers compile without the
    suite's persistent compilation cache: an executable loaded from it on one process while the
    other compiles leaves gloo waiting for a peer that never joins."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    logs = [(open(f"{run_dir}.{i}.out", "w+"), open(f"{run_dir}.{i}.err", "w+")) for i in range(2)]
    procs = [subprocess.Popen([sys.executable, WORKER, mode, cfg, run_dir, str(port), str(i)],
                              stdout=out, stderr=err, text=True, env=env) for i, (out, err) in enumerate(logs)]
    outs = []
    try:
        for p, (out, err) in zip(procs, logs):
            p.wait(timeout=900)
            out.seek(0), err.seek(0)
            stdout, stderr = out.read(), err.read()
            assert p.returncode == 0, stdout[-2000:] + stderr[-4000:]
            outs.append(_result(stdout))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        for f in (f for pair in logs for f in pair):
            f.close()
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
def test_two_process_eval_summaries_are_written_by_process_0(tmp_path):
    """On a 2-process mesh an evaluation finishes on both processes with the same eval loss, and
    process 0 (only) writes the generated-speech audio and the timeline image, finite and of the
    eval window's length, with nothing logged (no summary failure)."""
    outs = _two_processes("summaries", config_path("tiny.py"), str(tmp_path / "two"))
    assert outs[0]["eval_loss"] == outs[1]["eval_loss"] and np.isfinite(outs[0]["eval_loss"])
    assert outs[1]["written"] == [] and outs[0]["logs"] == outs[1]["logs"] == [], outs
    audio, image = sorted(outs[0]["written"])
    # 3 micro-turns x 4 audio positions x 4 frames of 12.5 ms at 16 kHz (Griffin-Lim's hop is 200 samples)
    assert audio[0] == "eval/generated_speech" and audio[2] and abs(audio[1] - 3 * 16 * 200) <= 400, audio
    assert image[0] == "eval/timeline" and image[1][2] in (3, 4) and min(image[1][:2]) > 100, image
