"""The `python -m interaction_jax.stream` command: outputs written, clear errors for bad inputs."""

import json
import os
import subprocess
import sys

import numpy as np
import soundfile as sf
from conftest import REPO, config_path

from interaction_jax.features.audio import load_audio, save_wav


def _run(*args):
    return subprocess.run([sys.executable, "-m", "interaction_jax.stream", f"--config={config_path('tiny.py')}", *args],
                          cwd=REPO, capture_output=True, text=True, timeout=300)


def _reject_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def test_json_safe_writes_null_for_non_finite_numbers():
    from interaction_jax.stream import json_safe

    summary = {"a": float("inf"), "b": [float("nan"), 1.5, (float("-inf"), 2)], "c": {"d": 3, "e": "Infinity"}}
    text = json.dumps(json_safe(summary), allow_nan=False)
    assert json.loads(text, parse_constant=_reject_constant) == {"a": None, "b": [None, 1.5, [None, 2]],
                                                                 "c": {"d": 3, "e": "Infinity"}}


def test_stream_checks_the_output_folder_before_reading_or_computing(tmp_path, monkeypatch, tiny_config):
    """An --out that cannot be created fails first: no input read, no model built, nothing written."""
    import pytest

    from interaction_jax import stream
    from interaction_jax.errors import UserError

    def too_early(*args, **kwargs):
        raise AssertionError("the session's inputs were read before --out was checked")

    monkeypatch.setattr(stream, "_user_inputs", too_early)
    (tmp_path / "afile").write_text("x")
    with pytest.raises(UserError, match="cannot be created"):
        stream.run(tiny_config, str(tmp_path / "afile" / "out"), stream.StreamOptions(init="random"))
    assert sorted(os.listdir(tmp_path)) == ["afile"]


def test_stream_command_writes_outputs(tmp_path):
    wav = tmp_path / "user.wav"
    t = np.arange(int(0.8 * 22050)) / 22050
    tone = 0.3 * np.sin(2 * np.pi * 220 * t)
    save_wav(wav, np.stack([tone, 0.5 * tone]), 22050)  # not the model rate: resampled; stereo: mixed, with a notice
    events = tmp_path / "events_in.json"
    events.write_text(json.dumps([{"time": 0.3, "text": "hello"}]))
    out = tmp_path / "out"
    r = _run("--init=random", f"--input={wav}", f"--text_events={events}", f"--out={out}")
    assert r.returncode == 0, r.stderr[-3000:]
    assert sorted(os.listdir(out)) == ["events.json", "model.wav", "timeline.png", "transcript.json"]
    summary = json.loads((out / "events.json").read_text(), parse_constant=_reject_constant)  # as strict as JSON.parse
    assert summary["micro_turns"] == 4 and summary["memory"]["kv_bytes_per_session"] > 0
    assert summary["memory"]["max_session_seconds"] is None  # the sliding policy has no limit: null, not Infinity
    assert "words" in json.loads((out / "transcript.json").read_text())
    assert "has 2 channels: mixed down to mono" in r.stdout
    pcm, sr = sf.read(out / "model.wav", dtype="int16")
    assert sr == 16000 and len(pcm) == len(load_audio(wav, 16000, mono="mix"))  # exactly the input's length
    assert np.abs(pcm.astype(np.int32)).max() < 32767  # a random-init model's noise is limited, never clipped


def test_stream_command_bad_inputs(tmp_path):
    r = _run(f"--workdir={tmp_path / 'nothing'}")
    assert r.returncode == 2 and "does not exist (expected a training run directory)" in r.stderr
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not audio at all")
    r = _run("--init=random", f"--input={bad}", f"--out={tmp_path / 'o'}")
    assert r.returncode != 0 and "cannot decode audio" in r.stderr
