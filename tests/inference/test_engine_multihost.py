"""Two `jax.distributed` processes on 127.0.0.1 (gloo, 4 CPU devices each) serve one session on a
tensor=2 x data=4 mesh spanning both, and it equals the one-device engine.

`multihost_engine_worker.py` runs in subprocesses (device counts and the distributed client are set
before JAX starts). Both processes step the same host inputs, as a replicated scheduler does; the
teacher-forced session's text logits and flow-head states must match the one-device engine's, on
both processes, with one compilation.
"""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "multihost_engine_worker.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _result(text: str) -> dict:
    return json.loads([ln for ln in text.splitlines() if ln.startswith("RESULT ")][-1][7:])


def _run(tmp_path, *args_per_process) -> list[dict]:
    """Runs one worker per argument list; output to files (a worker blocked on a full pipe would
    never reach the distributed shutdown barrier)."""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("JAX_COMPILATION_CACHE_DIR", None)  # a cached executable on one process only stalls gloo
    logs = [tmp_path / f"worker{i}.log" for i in range(len(args_per_process))]
    files = [open(p, "w") for p in logs]
    procs = [subprocess.Popen([sys.executable, WORKER, *a], stdout=f, stderr=subprocess.STDOUT, env=env, cwd=REPO)
             for a, f in zip(args_per_process, files)]
    try:
        for p in procs:
            p.wait(timeout=900)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        for f in files:
            f.close()
    texts = [p.read_text() for p in logs]
    for p, t in zip(procs, texts):
        assert p.returncode == 0, t[-4000:]
    return [_result(t) for t in texts]


@pytest.mark.slow
def test_two_process_engine_serves_one_session_like_one_device(tmp_path):
    port = str(_free_port())
    served = _run(tmp_path, ["serve", port, "0"], ["serve", port, "1"])
    (ref,) = _run(tmp_path, ["reference"])
    assert sorted(r["process"] for r in served) == [0, 1] and all(r["processes"] == 2 for r in served)
    assert all(r["devices"] == 8 and r["mesh_devices"] == 8 for r in served), served
    assert ref["processes"] == 1 and ref["mesh_devices"] == 0
    want_logits, want_hidden = np.asarray(ref["logits"]), np.asarray(ref["hidden"])
    assert len(want_logits) >= 4 and np.abs(want_logits).max() > 0
    for r in served:
        assert r["compilations"] == 1, r["compilations"]
        np.testing.assert_allclose(np.asarray(r["logits"]), want_logits, atol=2e-5)
        np.testing.assert_allclose(np.asarray(r["hidden"]), want_hidden, atol=2e-5)
    # the free-running session beside it samples the same tokens on both processes
    assert served[0]["free_running_tokens"] == served[1]["free_running_tokens"]
