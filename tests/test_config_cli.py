"""Command-line overrides: a typo in --config.x.y fails with the key and the real fields."""

import pytest
from conftest import config_path

from interaction_jax.config_lib import check_cli_overrides


def test_unknown_cli_override_exits_with_a_clear_message():
    with pytest.raises(SystemExit, match="unknown config key 'model.bogus'.*known fields"):
        check_cli_overrides(["prog", f"--config={config_path('tiny.py')}", "--config.model.bogus=1"])


def test_known_cli_overrides_pass():
    check_cli_overrides(["prog", f"--config={config_path('tiny.py')}", "--config.model.num_layers=3"])
