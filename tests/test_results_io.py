"""`results_io`: a result file is replaced whole or not at all, and says where it was measured."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
from conftest import REPO

from interaction_jax.results_io import write_json, write_record


def test_a_failed_write_leaves_the_saved_result_and_no_temp_file(tmp_path):
    path = tmp_path / "result.json"
    write_json(str(path), {"median_ms": 1.0})
    with pytest.raises(TypeError):
        write_json(str(path), {"median_ms": object()})  # not JSON: fails part-way through the dump
    assert json.loads(path.read_text()) == {"median_ms": 1.0}
    assert os.listdir(tmp_path) == ["result.json"]
    assert oct(path.stat().st_mode & 0o777) == "0o644"


def test_a_record_carries_commit_jax_hardware_and_command_and_keeps_its_own_keys(tmp_path):
    import jax

    path = tmp_path / "sub" / "bench.json"  # a missing folder is made
    write_record(str(path), {"rows": [1, 2], "command": "kept"}, argv=[str(REPO / "experiments/perf/x.py"), "--a=1"])
    got = json.loads(path.read_text())
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout
    assert got["commit"].split("-")[0] == head.strip()
    assert got["jax"] == jax.__version__ and got["hardware"]["cpu_count"] == os.cpu_count()
    assert got["rows"] == [1, 2] and got["command"] == "kept"
    write_record(str(path), {}, argv=[str(REPO / "experiments/perf/x.py"), "--a=1"])
    assert json.loads(path.read_text())["command"] == "python experiments/perf/x.py --a=1"  # no machine path


def test_the_record_names_the_cpu_model_from_cpuinfo(tmp_path):
    import platform

    from interaction_jax.results_io import cpu_model

    path = "/proc/cpuinfo"
    if os.path.exists(path):
        with open(path) as f:
            names = [ln.split(":", 1)[1].strip() for ln in f if ln.lower().startswith("model name")]
    else:
        names = []
    expected = names[0] if names else (platform.processor() or platform.machine())
    assert cpu_model() == expected and expected
    write_record(str(tmp_path / "r.json"), {})
    assert json.loads((tmp_path / "r.json").read_text())["hardware"]["cpu_model"] == expected
