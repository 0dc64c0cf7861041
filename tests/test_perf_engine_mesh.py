"""experiments/perf/engine_mesh.py: mesh specs parsed or refused in one line (timings are never asserted)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import REPO, load_script

SCRIPT = REPO / "experiments" / "perf" / "engine_mesh.py"


def _module():
    return load_script(SCRIPT, "_perf_engine_mesh")


def test_mesh_specs_name_axes_whose_sizes_multiply_to_the_faked_devices():
    em = _module()
    assert em.parse_mesh("tensor=2+data=4") == {"tensor": 2, "data": 4}
    assert em.parse_mesh("expert=4+data=2") == {"expert": 4, "data": 2}
    for bad in ("tensor=2", "rows=8", "data=x", "data=8+tensor=0", "data"):
        with pytest.raises(em.MeshSpecError):
            em.parse_mesh(bad)


@pytest.mark.parametrize("args", [["--meshes=data=3"], ["--meshes=heads=8"], ["--ticks=0"],
                                  ["--slots=6", "--meshes=data=8"]])
def test_bad_flags_exit_2_with_one_line(args):
    r = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert r.returncode == 2, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("engine_mesh: "), r.stderr
