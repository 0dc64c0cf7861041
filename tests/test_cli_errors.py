"""One error boundary per command: every bad input exits 2 with one line on stderr, nothing touched.

Each row runs a command's `main` in this process through `cli.invoke` (the same flag parsing,
config overrides and boundary as the command line) against one shared fixture folder holding a
prepared store, a run directory with a (fake) checkpoint, a corrupt run, a config file and some
unrelated files. After every row the whole folder is hashed again: no file changed, none added.
A few rows run the real `python -m` entry points as subprocesses.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, config_path, load_script

from interaction_jax import cli

TINY = config_path("tiny.py")


def _snapshot(root: Path) -> dict[str, str]:
    """Path -> sha256 of every file under `root` (folders as 'dir')."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        out[rel] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """The shared fixture folder (module docstring); built once."""
    from interaction_jax.config_lib import load_config, save_run_config
    from interaction_jax.data.prepare import prepare
    from interaction_jax.data.store import write_store

    root = tmp_path_factory.mktemp("cli_errors")
    prepare(str(root / "store"), task="timespeak", num_episodes=1, episode_seconds=2.0, workers=1)
    shutil.copytree(root / "store", root / "store_bad_manifest")
    (root / "store_bad_manifest" / "manifest.json").write_text("{not json")
    shutil.copytree(root / "store", root / "store_truncated")
    shard = next(p for p in (root / "store_truncated").iterdir() if p.name != "manifest.json")
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 3])
    write_store(str(root / "store_empty"), [], progress=False)
    shutil.copytree(root / "store", root / "store_flipped")
    _flip_first_record(root / "store_flipped" / "shard-00000.array_record")
    run = root / "run"
    save_run_config(load_config(TINY), str(run))
    (run / "checkpoints" / "2").mkdir(parents=True)
    (run / "checkpoints" / "2" / "state").write_bytes(os.urandom(256))
    (root / "corrupt_run").mkdir()
    (root / "corrupt_run" / "config.json").write_text('{"model": {"d_model": 64')
    (root / "alien_run").mkdir()
    (root / "alien_run" / "config.json").write_text(json.dumps({"model": {"wings": 2}}))
    (root / "typed_run").mkdir()
    (root / "typed_run" / "config.json").write_text(json.dumps({"model": {"num_layers": "four"}}))
    (root / "precious").mkdir()
    (root / "precious" / "precious.txt").write_text("keep me")
    (root / "afile").write_text("not a folder")
    shutil.copy(TINY, root / "my_config.py")
    (root / "broken_config.py").write_text("def get_config(:\n")
    (root / "events_bad.json").write_text('{"time": 1}')
    (root / "events_negative.json").write_text(json.dumps([{"time": -0.4, "text": "hi"}]))
    (root / "events_late.json").write_text(json.dumps([{"time": 500, "text": "hi"}]))
    (root / "events_number.json").write_text(json.dumps([{"time": 1.0, "text": 12345}]))
    (root / "events_nan.json").write_text('[{"time": NaN, "text": "hi"}]')
    (root / "frames_late").mkdir()
    (root / "frames_late" / "500.png").write_text("never opened: the time is checked first")
    (root / "frames").mkdir()
    (root / "frames" / "0.5.png").write_text("not an image")
    (root / "manifest_bad.jsonl").write_text("{oops\n")
    return root


def _flip_first_record(shard: Path) -> None:
    """One bit flipped inside the first record's bytes (a Riegeli chunk: 40-byte header at 64, then its data)."""
    data = bytearray(shard.read_bytes())
    size, type_and_count = struct.unpack_from("<Q", data, 64 + 8)[0], struct.unpack_from("<Q", data, 64 + 24)[0]
    assert chr(type_and_count & 0xFF) == "r" and type_and_count >> 8 == 1 and size > 2000, (size, type_and_count)
    data[64 + 40 + 1000] ^= 0x10
    shard.write_bytes(bytes(data))


def _script(path: Path):
    """A script imported as a module (it defines its flags only in `_define_flags`)."""
    return load_script(path)


def _command(name: str):
    """(main, define_flags) of a command."""
    if name in ("delegation", "reproduce"):
        folder = "delegation" if name == "delegation" else "interaction_small"
        module = _script(REPO / "experiments" / folder / "run.py")
        return module.main, module._define_flags
    module = importlib.import_module({
        "train": "interaction_jax.train.__main__", "evaluate": "interaction_jax.evaluate",
        "stream": "interaction_jax.stream", "serve": "interaction_jax.serve", "summary": "interaction_jax.summary",
        "quickstart": "interaction_jax.quickstart", "prepare": "interaction_jax.data.prepare",
        "inspect": "interaction_jax.data.inspect", "client": "interaction_jax.client",
    }[name])
    return module.main, module._define_flags


C = f"--config={TINY}"
# (command, argv after the program name, a fragment the one stderr line must contain)
CASES = [
    # --- train ---
    ("train", ["--config=missing.py", "--workdir=new_run"], "config file 'missing.py' does not exist"),
    ("train", ["--config=broken_config.py", "--workdir=new_run"], "is not valid Python"),
    ("train", ["--config=afile", "--workdir=new_run"], "config file 'afile' is not valid Python"),
    ("train", [C, "--workdir=new_run", "--config.model.bogus=1"], "unknown config key 'model.bogus'"),
    ("train", [C, "--workdir=new_run", "--config.model.num_layers=abc"], "model.num_layers='abc': expected an integer"),
    ("train", [C, "--workdir=new_run", "--config.train.learning_rate=fast"], "expected a number"),
    ("train", [C, "--workdir=new_run", "--config.train.async_checkpointing=maybe"], "expected a boolean"),
    ("train", [C, "--workdir=new_run", "--config.train.num_steps=-5"], "train.num_steps=-5 is out of range"),
    ("train", [C, "--workdir=new_run", "--config.train.num_steps=1.5"], "expected an integer"),
    ("train", [C, "--workdir=new_run", "--config.model.num_kv_heads=3"], "must be a multiple of model.num_kv_heads=3"),
    ("train", [C, "--workdir=new_run", "--config.layout.micro_turn_ms=210"], "micro_turn_ms=210.0 must be a whole"),
    ("train", [C, "--workdir=new_run", "--config.data.batch_size=0"], "data.batch_size=0 is out of range"),
    ("train", [C, "--workdir=new_run", "--config.data.window_micro_turns=0"], "data.window_micro_turns=0"),
    ("train", [C, "--workdir=new_run", "--config.train.self_audio_dropout=1.5"], "self_audio_dropout=1.5"),
    ("train", [C, "--workdir=new_run", "--config.inference.top_p=0"], "inference.top_p=0"),
    ("train", [C, "--workdir=new_run", "--config.model.remat=some"], "model.remat='some' is not one of"),
    ("train", [C, "--workdir=new_run", "--config.data.task=nope"], "data.task='nope'"),
    ("train", [C, "--workdir=new_run", "--config.model=3"], "is a group of fields"),
    ("train", [C, "--workdir=new_run", "--config.data.data_dir=nowhere"], "episode store"),
    ("train", [C, "--workdir=new_run", "--config.data.data_dir=precious"], "not a complete episode store"),
    ("train", [C, "--workdir=new_run", "--config.data.data_dir=store_bad_manifest"], "not valid JSON"),
    ("train", [C, "--workdir=new_run", "--config.data.data_dir=store_empty"], "store_empty holds no episodes"),
    ("train", [C, "--workdir=new_run", "--config.data.eval_data_dir=store_empty"], "eval_data_dir=store_empty holds"),
    ("train", [C, "--workdir=new_run", "--config.data.eval_num_episodes=0"], "eval_num_episodes=0 is out of range"),
    ("train", [C, "--workdir=new_run", "--config.train.grad_accum_steps=3"], "must be a multiple of train.grad_accum"),
    ("train", [C, "--workdir=new_run", "--config.data.on_corrupt_record=always"], "on_corrupt_record='always'"),
    ("train", [C, "--workdir=new_run", "--config.data.max_corrupt_records=-1"], "max_corrupt_records=-1"),
    ("train", ["--workdir=new_run", "--config.model.d_model=8"], "overrides need --config=FILE"),
    ("train", [C], "--workdir=DIR are required"),
    ("train", [C, "--workdir=afile"], "is a file"),
    ("train", [C, "--workdir=new_run", "--bogus"], "Unknown command line flag 'bogus'"),
    ("train", [C, "--workdir=new_run", "--num_processes=abc"], "num_processes"),
    ("train", [C, "--workdir=new_run", "--distributed=sometimes"], "distributed"),
    ("train", [C, "--workdir=new_run", "stray"], "unexpected arguments"),
    # --- prepare ---
    ("prepare", ["--task=timespeak"], "--out=DIR is required"),
    ("prepare", ["--out=new_store", "--num_episodes=0"], "num_episodes"),
    ("prepare", ["--out=new_store", "--num_episodes=abc"], "num_episodes"),
    ("prepare", ["--out=new_store", "--task=nope"], "unknown task 'nope'"),
    ("prepare", ["--out=new_store", "--task=mix:timespeak=x"], "must be a number"),
    ("prepare", ["--out=new_store", "--episode_seconds=0"], "--episode_seconds=0.0"),
    ("prepare", ["--out=new_store", "--records_per_shard=0"], "records_per_shard"),
    ("prepare", ["--out=precious", "--num_episodes=1", "--episode_seconds=2"], "is not an episode store"),
    ("prepare", ["--out=precious", "--num_episodes=1", "--episode_seconds=2", "--overwrite"], "refusing to overwrite"),
    ("prepare", ["--out=afile", "--num_episodes=1", "--episode_seconds=2", "--overwrite"], "is a file"),
    ("prepare", ["--out=store", "--num_episodes=1", "--episode_seconds=2"], "already holds an episode store"),
    ("prepare", ["--out=new_store", "--manifest=missing.jsonl"], "does not exist"),
    ("prepare", ["--out=new_store", "--manifest=manifest_bad.jsonl"], "not valid JSON"),
    # --- inspect ---
    ("inspect", [], "usage"),
    ("inspect", ["nowhere"], "does not exist"),
    ("inspect", ["precious"], "not a complete episode store"),
    ("inspect", ["store_bad_manifest"], "not valid JSON"),
    ("inspect", ["store_truncated"], "store_truncated"),
    ("inspect", ["store_flipped"], "record 0 (record 0 of shard shard-00000.array_record) is corrupt"),
    ("inspect", ["store", "--episode=5"], "holds 1 episodes"),
    ("inspect", ["store", "--episode=-1"], "episode"),
    ("inspect", ["store", "--png=nowhere/w.png"], "does not exist"),
    ("inspect", ["store", "--config=missing.py"], "does not exist"),
    ("inspect", ["store", C, "--config.layout.video_patches=5"], "video_patches=5"),
    # --- stream ---
    ("stream", [C], "--init=checkpoint needs --workdir"),
    ("stream", [C, "--workdir=nowhere"], "--workdir=nowhere does not exist"),
    ("stream", ["--workdir=corrupt_run"], "cannot read the run's config"),
    ("stream", ["--workdir=alien_run"], "unknown key model.wings"),
    ("stream", ["--workdir=typed_run"], "model.num_layers='four' must be an integer"),
    ("stream", [C, "--init=random", "--task=nope"], "unknown task 'nope'"),
    ("stream", [C, "--init=random", "--seconds=0"], "--seconds=0.0"),
    ("stream", [C, "--init=random", "--seconds=abc"], "seconds"),
    ("stream", [C, "--init=random", "--input=missing.wav", "--out=new_out"], "missing.wav"),
    ("stream", [C, "--init=random", "--input=afile", "--out=new_out"], "afile"),
    ("stream", [C, "--init=random", "--text_events=events_bad.json", "--out=new_out"], "expected a JSON list"),
    ("stream", [C, "--init=random", "--text_events=events_negative.json", "--out=new_out"], "time -0.4 s is outside"),
    ("stream", [C, "--init=random", "--text_events=events_late.json", "--out=new_out"], "time 500.0 s is outside"),
    ("stream", [C, "--init=random", "--text_events=events_number.json", "--out=new_out"], "must be a string"),
    ("stream", [C, "--init=random", "--text_events=events_nan.json", "--out=new_out"], "time nan s is outside"),
    ("stream", [C, "--init=random", "--video=frames_late", "--out=new_out"], "frame '500.png': time 500.0 s"),
    ("stream", [C, "--init=random", "--video=frames", "--out=new_out"], "not a readable image"),
    ("stream", [C, "--init=random", "--video=afile", "--out=new_out"], "not a directory"),
    ("stream", [C, "--init=random", "--out=afile"], "--out=afile is a file"),
    ("stream", [C, "--init=random", "--out=afile/sub"], "cannot be created"),
    ("stream", [C, "--init=fresh"], "init"),
    ("stream", [C, "--init=random", "--config.inference.temperature=-1"], "inference.temperature=-1.0"),
    # --- evaluate ---
    ("evaluate", [C], "--init=checkpoint needs --workdir"),
    ("evaluate", [C, "--workdir=nowhere"], "--workdir=nowhere does not exist"),
    ("evaluate", ["--workdir=corrupt_run"], "cannot read the run's config"),
    ("evaluate", [C, "--init=random", "--benchmarks=bogus", "--out=new_eval"], "unknown ['bogus']"),
    ("evaluate", [C, "--init=random", "--num_examples=0"], "num_examples"),
    ("evaluate", [C, "--init=random", "--split=train"], "split"),
    ("evaluate", [C, "--init=random", "--out=afile"], "--out=afile is a file"),
    ("evaluate", [C, "--init=random", "--asr=nomodule:fn", "--out=new_eval"], "nomodule"),
    # --- serve ---
    ("serve", [C, "--host=0.0.0.0", "--init=random"], "is not loopback"),
    ("serve", [C, "--port=99999", "--init=random"], "port"),
    ("serve", [C], "--init=checkpoint needs --workdir"),
    ("serve", [C, "--workdir=nowhere"], "--workdir=nowhere does not exist"),
    ("serve", ["--workdir=corrupt_run"], "cannot read the run's config"),
    ("serve", [C, "--clock=sometimes", "--init=random"], "clock"),
    ("serve", [C, "--init=random", "--config.inference.slots=0"], "inference.slots=0"),
    # --- summary ---
    ("summary", [], "--config=FILE is required"),
    ("summary", ["--config=missing.py"], "does not exist"),
    ("summary", [C, "--config.model.d_model=abc"], "expected an integer"),
    ("summary", [C, "--config.model.head_dim=-1"], "model.head_dim=-1"),
    ("summary", [C, "extra"], "unexpected arguments"),
    # --- quickstart ---
    ("quickstart", [], "--config is required"),
    ("quickstart", [C, "--config.data.num_episodes=0", "--workdir=new_qs"], "data.num_episodes=0"),
    ("quickstart", [C, "--train_steps=-1", "--workdir=new_qs"], "train_steps"),
    ("quickstart", [C, "--workdir=afile"], "is a file"),
    # --- client ---
    ("client", [], "--input is required"),
    ("client", ["--input=missing.wav"], "missing.wav"),
    ("client", ["--input=afile", "--timeout_s=abc"], "timeout_s"),
    # --- experiments/delegation/run.py ---
    ("delegation", ["--config=missing.py"], "does not exist"),
    ("delegation", [C, "--num_examples=abc"], "num_examples"),
    ("delegation", [C], "--init=checkpoint needs --workdir"),
    ("delegation", [C, "--workdir=nowhere"], "nowhere"),
    # --- experiments/interaction_small/run.py (make reproduce) ---
    ("reproduce", ["--workdir=new_repro", "--self_audios=loud"], "--self_audios: got ['loud']"),
    ("reproduce", ["--workdir=new_repro", "--temperatures=hot"], "--temperatures must be numbers"),
    ("reproduce", ["--workdir=new_repro", "--stages=cook"], "unknown ['cook']"),
]


def _case_id(case) -> str:
    name, argv, _ = case
    return f"{name}:{' '.join(a.replace(C, '--config=tiny') for a in argv) or '<none>'}"


@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_bad_input_is_one_line_exit_2_and_touches_nothing(case, world, monkeypatch, capsys):
    name, argv, fragment = case
    main, define_flags = _command(name)
    monkeypatch.chdir(world)
    before = _snapshot(world)
    capsys.readouterr()
    status = cli.invoke(main, [name, *argv], name=name, define_flags=define_flags)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert status == 2, err
    assert len(lines) == 1, err
    assert lines[0].startswith(f"[{name}] error: ") and "Traceback" not in err
    assert fragment in lines[0], lines[0]
    assert _snapshot(world) == before  # nothing changed, nothing added


def test_train_stops_on_a_corrupt_record_when_told_naming_it(world, monkeypatch, capsys):
    """data.on_corrupt_record=stop: one line naming the shard and record, exit 2, no checkpoint written."""
    main, define_flags = _command("train")
    monkeypatch.chdir(world)
    before = _snapshot(world)
    capsys.readouterr()
    try:
        status = cli.invoke(main, ["train", C, "--workdir=new_run", "--config.data.data_dir=store_flipped",
                                   "--config.data.on_corrupt_record=stop", "--config.data.window_micro_turns=2"],
                            name="train", define_flags=define_flags)
        lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert status == 2 and len(lines) == 1, lines
        assert "record 0 (record 0 of shard shard-00000.array_record) is corrupt" in lines[0]
        assert "on_corrupt_record='stop'" in lines[0] and "Traceback" not in lines[0]
        after = _snapshot(world)
        assert {k: v for k, v in after.items() if not k.startswith("new_run")} == before
        assert not any(k.startswith("new_run/checkpoints/") for k in after), sorted(after)
    finally:
        shutil.rmtree(world / "new_run", ignore_errors=True)


@pytest.mark.parametrize("module,args,fragment", [
    ("interaction_jax.train", [f"--config={TINY}", "--workdir=new_run", "--config.model.num_layers=abc"],
     "expected an integer"),
    ("interaction_jax.train", ["--config=missing.py", "--workdir=new_run"], "does not exist"),
    ("interaction_jax.data.prepare", ["--out=new_store", "--num_episodes=abc"], "num_episodes"),
    ("interaction_jax.stream", [f"--config={TINY}"], "needs --workdir"),
])
def test_entry_points_exit_2_with_one_line(module, args, fragment, world):
    """The real `python -m` path: absl's own usage text and tracebacks never appear."""
    before = _snapshot(world)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-m", module, *args], cwd=world, capture_output=True, text=True,
                         timeout=120, env=env)
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert out.returncode == 2, out.stderr
    assert len(lines) == 1 and fragment in lines[0] and "error:" in lines[0], out.stderr
    assert _snapshot(world) == before


def test_help_hint_is_part_of_the_one_line(world, monkeypatch, capsys):
    main, define_flags = _command("train")
    monkeypatch.chdir(world)
    assert cli.invoke(main, ["train", "--bogus"], name="train", define_flags=define_flags) == 2
    assert cli.HELP_HINT in capsys.readouterr().err


def test_overrides_with_a_space_and_after_double_dash():
    rest, overrides = cli.split_overrides(["prog", "--config=x.py", "--config.model.d_model", "8",
                                           "--config.train.num_steps=3", "--", "--config.a=1"])
    assert overrides == [("model.d_model", "8"), ("train.num_steps", "3")]
    assert rest == ["prog", "--config=x.py", "--", "--config.a=1"]


def test_a_bug_keeps_its_traceback():
    """Only bad input is folded into one line: any other exception leaves the boundary unchanged."""

    def buggy(argv):
        raise KeyError("a bug, not a bad input")

    with pytest.raises(KeyError, match="a bug, not a bad input"):
        cli.invoke(buggy, ["prog"], name="prog")
    code = "from interaction_jax import cli\ndef main(argv):\n    raise KeyError('a bug')\ncli.run(main, name='bug')\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 1 and "Traceback" in out.stderr and "KeyError: 'a bug'" in out.stderr, out.stderr
    assert "[bug] error:" not in out.stderr
