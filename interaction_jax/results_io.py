"""Writing results: atomic JSON files that say where they were measured.

Every number in the docs comes from a committed JSON, so each file carries the commit, the
machine and the command that produced it; a write replaces the file whole or not at all (a
temp file in the same folder, then `os.replace`), so an interrupted benchmark never leaves a
half-written result where a good one was.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile

FILE_MODE = 0o644


def commit() -> str:
    """The short commit of this checkout, with "-dirty" when tracked files differ; "unknown" outside git."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True,
                             timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "") if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def cpu_model() -> str:
    """The CPU's model name (Linux's /proc/cpuinfo; `platform.processor()` elsewhere): figures from
    different CPUs must not be compared, and `processor` alone says only "x86_64"."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware() -> dict:
    """The machine as JAX sees it (platform, CPU model, core count, backend, devices)."""
    import jax

    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_model": cpu_model(), "cpu_count": os.cpu_count(), "jax_backend": jax.default_backend(),
            "devices": [str(d) for d in jax.devices()]}


def write_json(path: str, obj, indent: int = 1) -> str:
    """Writes JSON atomically (temp file in the same folder, chmod 0644, then os.replace); returns `path`."""
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".", suffix=".json.tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=indent)
        os.chmod(tmp, FILE_MODE)  # mkstemp makes 0600: unreadable to a tool run by another user
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def write_record(path: str, record: dict, argv: list[str] | None = None) -> str:
    """Writes a benchmark's `record` atomically with its provenance: the commit, JAX's version, the
    hardware and the command (keys the record already has are kept). Prints and returns `path`."""
    import jax

    argv = sys.argv if argv is None else argv
    out = dict(record)
    out.setdefault("commit", commit())
    out.setdefault("jax", jax.__version__)
    out.setdefault("hardware", hardware())
    out.setdefault("command", " ".join(["python", os.path.relpath(os.path.abspath(argv[0]), _repo()), *argv[1:]])
                   if argv and argv[0].endswith(".py") else " ".join(argv))
    write_json(path, out)
    print(f"wrote {path}")
    return path


def _repo() -> str:
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
