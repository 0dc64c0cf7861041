"""Command-line overrides: a typo in --config.x.y fails with the key and the real fields."""

import pytest
from conftest import config_path

from interaction_jax.config_lib import check_cli_overrides


def test_unknown_cli_override_exits_with_a_clear_message():
    with pytest.raises(SystemExit, match="unknown config key 'model.bogus'.*known fields"):
        check_cli_overrides(["prog", f"--config={config_path('tiny.py')}", "--config.model.bogus=1"])


def test_known_cli_overrides_pass():
    check_cli_overrides(["prog", f"--config={config_path('tiny.py')}", "--config.model.num_layers=3"])


@pytest.mark.parametrize("name", ["tiny.py", "small_moe.py", "tml_interaction_small.py"])
def test_run_config_round_trips_through_the_run_directory(name, tmp_path):
    from interaction_jax.config_lib import config_for_run, load_config, load_run_config, save_run_config

    config = load_config(config_path(name), ["model.num_layers=3", "train.learning_rate=0.002"])
    save_run_config(config, str(tmp_path))
    back = load_run_config(str(tmp_path))
    assert back.to_dict() == config.to_dict()
    assert type(back.train.learning_rate) is float and back.model.num_layers == 3
    assert config_for_run(None, str(tmp_path), config_path("tiny.py")).to_dict() == config.to_dict()
    assert config_for_run(None, str(tmp_path / "none"), config_path("tiny.py")).model.d_model == 64


def test_run_config_with_unknown_keys_fails_clearly(tmp_path):
    import json

    from interaction_jax.config_lib import ConfigError, load_run_config

    (tmp_path / "config.json").write_text(json.dumps({"model": {"wings": 2}}))
    with pytest.raises(ConfigError, match="unknown key model.wings"):
        load_run_config(str(tmp_path))
    with pytest.raises(ConfigError, match="cannot read"):
        load_run_config(str(tmp_path / "missing"))
