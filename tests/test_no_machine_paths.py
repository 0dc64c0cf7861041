"""Committed results never carry the measuring machine's paths (the repository's rule: no machine paths)."""

from __future__ import annotations

import json
import subprocess

from conftest import REPO

HOME_PREFIXES = ("/home/", "/work/", "/root/", "/Users/", "/mnt/", "/scratch/")


def _strings(obj):
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield k
            yield from _strings(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _strings(v)


def test_committed_json_has_no_absolute_machine_paths():
    files = subprocess.run(["git", "ls-files", "*.json"], cwd=REPO, capture_output=True, text=True,
                           check=True).stdout.split()
    assert files
    bad = []
    for rel in files:
        path = REPO / rel
        if not path.exists():
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            continue  # not JSON data (e.g. a fixture of bad input)
        bad += [f"{rel}: {s[:80]!r}" for s in _strings(data) if any(p in s for p in HOME_PREFIXES)]
    assert not bad, "\n".join(bad[:20])
