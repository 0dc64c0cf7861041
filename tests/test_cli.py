"""interaction_jax.cli.run: absl INFO (Orbax's flood) hidden by default, shown with --verbosity=0."""

from __future__ import annotations

import subprocess
import sys

PROGRAM = """
from absl import logging
from interaction_jax.cli import run

def main(argv):
    logging.info("an-info-line")
    logging.warning("a-warning-line")
    print("progress-line", flush=True)

run(main)
"""


def _run(*args: str) -> str:
    out = subprocess.run([sys.executable, "-c", PROGRAM, *args], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout + out.stderr


def test_info_hidden_by_default_warnings_and_progress_kept():
    text = _run()
    assert "progress-line" in text and "a-warning-line" in text
    assert "an-info-line" not in text


def test_verbosity_flag_shows_info_again():
    assert "an-info-line" in _run("--verbosity=0")


def test_quickstart_verdict_compares_with_the_cascade():
    from interaction_jax.eval.benchmarks import turn_taking_verdict  # importing quickstart defines absl flags

    fd = lambda rate, lat: {"fd": {"turn_taking_takeover_rate": rate, "turn_taking_latency_median_s": lat}}  # noqa: E731
    better = turn_taking_verdict({"model": fd(0.9, 0.3), "turn-based baseline": fd(1.0, 0.55)})
    assert "90%" in better and "0.30 s" in better and "0.55 s" in better and "sooner than the cascade" in better
    slower = turn_taking_verdict({"model": fd(0.9, 0.7), "turn-based baseline": fd(1.0, 0.55)})
    assert "Not yet better" in slower
    mute = turn_taking_verdict({"model": fd(0.5, 0.2), "turn-based baseline": fd(1.0, 0.55)})
    assert "Not yet better" in mute  # answering half the questions is not the behaviour
    assert turn_taking_verdict({"model": fd(0.9, None), "turn-based baseline": fd(1.0, 0.5)}) is None
