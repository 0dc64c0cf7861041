"""The GPU-machine scripts refuse bad settings with one line and exit 2 before doing any work
(they run unattended, inside a device call whose minutes are counted)."""

import os
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(script: str, env: dict, tmp_path) -> subprocess.CompletedProcess:
    full = {**os.environ, "OUT": str(tmp_path / "out"), "WORK": str(tmp_path / "work"), **env}
    return subprocess.run(["bash", os.path.join(ROOT, script)], cwd=ROOT, env=full, capture_output=True,
                          text=True, timeout=120)


@pytest.mark.parametrize("steps", ["abc", "12k", "2", "-5"])
def test_gpu_train_rejects_a_bad_step_count(steps, tmp_path):
    r = _run("experiments/interaction_small/gpu_train.sh", {"STEPS": steps}, tmp_path)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "STEPS" in lines[0], r.stderr
    assert not (tmp_path / "work").exists()  # nothing rendered or trained


def test_gpu_run_rejects_an_unknown_stage(tmp_path):
    r = _run("experiments/perf/gpu_run.sh", {"STAGES": "tests_typo", "PYTHON": "true"}, tmp_path)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "unknown stage 'tests_typo'" in lines[0] and "train, invariant, hf" in lines[0], r.stderr
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_gpu_run_checks_every_stage_before_running_the_first(tmp_path):
    r = _run("experiments/perf/gpu_run.sh", {"STAGES": "train,bogus", "PYTHON": "true"}, tmp_path)
    assert r.returncode == 2 and "unknown stage 'bogus'" in r.stderr
    assert not (tmp_path / "out").exists()  # the train stage never started
