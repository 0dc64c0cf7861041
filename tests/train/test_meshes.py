"""8-device CPU mesh: same loss on every mesh shape (an expert axis runs expert parallelism);
restore onto a different mesh shape."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import config_path

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.mark.slow
def test_every_mesh_shape_matches_one_device_and_restores_across_meshes(tmp_path):
    r = subprocess.run(
        [sys.executable, os.path.join(HERE, "mesh_worker.py"), config_path("tiny.py"), str(tmp_path / "ckpt")],
        capture_output=True, text=True, timeout=900,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    result = json.loads([ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")][-1][7:])
    ref = np.array(result["reference"])
    for shape, losses in result["meshes"].items():
        np.testing.assert_allclose(losses, ref, rtol=2e-5, err_msg=shape)
        # the trainer turns expert parallelism on exactly where the mesh has an expert axis
        want_ep = 1 if '"expert"' in shape else 0  # tiny: 2 layers "dense,moe" = 1 MoE layer
        assert result["ep_layers"][shape] == want_ep, (shape, result["ep_layers"])
    assert result["restore"] == {"step": 2, "identical": True, "on_new_mesh": True}
