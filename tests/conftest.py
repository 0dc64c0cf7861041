"""Shared fixtures: repository paths, the tiny config, and scripts imported by path."""

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"


def config_path(name: str) -> str:
    return str(CONFIGS / name)


def load_script(path: Path | str, name: str | None = None) -> ModuleType:
    """An experiment script (not a package module) imported from its file, for its functions.

    Registered in `sys.modules` (a dataclass resolves its annotations through it). Its folder is on
    `sys.path` while it runs, so its imports of sibling scripts work; what the script puts on
    `sys.path` itself stays (some import siblings lazily), only this function's own entry goes.
    """
    path = Path(path)
    name = name or f"_script_{path.parent.name}_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    sys.path.insert(0, str(path.parent))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(path.parent))  # one copy: the script's own insert, if any, remains
    return module


@pytest.fixture(scope="session")
def tiny_config():
    from interaction_jax.config_lib import load_config

    return load_config(config_path("tiny.py"))


def _enable_compilation_cache() -> None:
    """Share compiled executables across tests and runs (identical shapes recompile in ms).

    Lives in the user cache directory (override with JAX_COMPILATION_CACHE_DIR); subprocess
    tests inherit it through the environment. Results never depend on it, only speed.
    """
    import os

    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "interaction_jax" / "jax_compilation"
    cache = os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(default))
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
    import jax

    jax.config.update("jax_compilation_cache_dir", cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


_enable_compilation_cache()
