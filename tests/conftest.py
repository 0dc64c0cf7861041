"""Shared fixtures: repository paths and the tiny config."""

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"


def config_path(name: str) -> str:
    return str(CONFIGS / name)


@pytest.fixture(scope="session")
def tiny_config():
    from interaction_jax.config_lib import load_config

    return load_config(config_path("tiny.py"))
