"""Scripts define their absl flags when run, not on import, so tests can import them in-process.

A flag defined at import would clash with the flags of the next command a test invokes
(`cli.invoke`), or with a second import of the same script.
"""

from __future__ import annotations

import pytest
from conftest import REPO, load_script

SCRIPTS = [
    "experiments/perf/data_pipeline.py",
    "experiments/perf/train_throughput.py",
    "experiments/interaction_small/run.py",
    "experiments/interaction_small/ablations.py",
    "experiments/interaction_small/depth.py",
    "experiments/interaction_small/transcription_probe.py",
    "experiments/delegation/run.py",
    "experiments/fdb_scoring/score.py",
    "experiments/visual_proactivity/probe.py",
]


@pytest.mark.parametrize("script", SCRIPTS)
def test_importing_a_script_defines_no_flags_and_define_flags_does(script):
    from absl import app, flags  # noqa: F401 - absl.app defines its own flags (--pdb, ...) on first import

    before = set(flags.FLAGS)
    path = REPO / script
    module = load_script(path, f"_imported_{path.parent.name}_{path.stem}")
    assert set(flags.FLAGS) == before, sorted(set(flags.FLAGS) - before)
    try:
        module._define_flags()
        assert set(flags.FLAGS) - before  # the script's own flags, once it is run
    finally:
        for name in set(flags.FLAGS) - before:
            delattr(flags.FLAGS, name)


def test_train_throughput_config_entries_name_a_file_and_its_overrides():
    from interaction_jax.errors import UserError

    path = REPO / "experiments/perf/train_throughput.py"
    module = load_script(path, "_train_throughput_entries")
    assert module.config_path_and_overrides("small") == (str(REPO / "configs" / "small.py"), [])
    cfg = str(REPO / "experiments/interaction_small/config.py")
    got = module.config_path_and_overrides(f"{cfg}@model.scan_layers=True+model.attention_impl=xla")
    assert got == (cfg, ["model.scan_layers=True", "model.attention_impl=xla"])
    with pytest.raises(UserError, match="no config file"):
        module.config_path_and_overrides("no_such_config")
