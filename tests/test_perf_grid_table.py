"""experiments/perf/grid_table.py: comparison rows are paired only with their own run's engine row."""

from __future__ import annotations

import json

from conftest import REPO, load_script

SCRIPT = REPO / "experiments" / "perf" / "grid_table.py"


def _module():
    return load_script(SCRIPT, "grid_table")


def _engine(cfg, n, secs, ms):
    return dict(bench="engine", config=cfg, sessions=n, length_s=secs, median_ms=ms, p99_ms=ms * 1.1,
                rtf=ms / 200.0, kv_mb_per_session=1.0)


def _write(path, rows, overrides=()):
    path.write_text(json.dumps({"device": "cpu", "overrides": list(overrides), "rows": rows}))
    return str(path)


def test_later_runs_win_and_ratios_stay_within_their_run(tmp_path):
    gt = _module()
    first = _write(tmp_path / "a.json", [
        _engine("small", 1, 10.0, 400.0),
        dict(bench="naive_prefix", config="small", sessions=1, length_s=10.0, median_ms=4000.0, p99_ms=1, rtf=20),
        _engine("tiny", 1, 10.0, 4.0),
    ])
    rerun = _write(tmp_path / "b.json", [
        _engine("small", 1, 10.0, 500.0),
        dict(bench="hf_transformers", config="small", sessions=1, length_s=10.0, median_ms=250.0, p99_ms=1, rtf=1),
        dict(bench="hf_transformers", config="tiny", sessions=4, length_s=10.0, median_ms=9.0, p99_ms=1, rtf=1),
    ])
    sliding = _write(tmp_path / "c.json", [_engine("small", 16, 300.0, 9000.0)],
                     overrides=["inference.context_policy=sliding"])
    cells = gt.load([first, rerun, sliding])
    small = cells[("small", 1, 10.0, "hard")]
    assert small["engine"]["median_ms"] == 500.0  # the re-run wins
    naive, naive_engine = small["naive_prefix"]
    assert naive_engine["median_ms"] == 400.0  # ... but the naive ratio keeps its own run's engine row
    assert ("tiny", 4, 10.0, "hard") not in cells  # an HF row with no engine row of its run is dropped
    table = gt.markdown(cells)
    assert "4000.0 ms vs 400.0 ms (engine 10.0x faster)" in table
    assert "250.0 ms vs 500.0 ms (HF 2.00x faster)" in table
    assert "| small | 16 | 5 min | sliding | 9000.0 ms |" in table
    lines = table.splitlines()[2:]
    assert [ln.split("|")[1].strip() for ln in lines] == ["tiny", "small", "small"]
