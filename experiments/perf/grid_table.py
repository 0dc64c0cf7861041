"""Merges `streaming.py` JSON files into one markdown grid (config x sessions x session length).

    python experiments/perf/grid_table.py experiments/perf/results/streaming_grid_cpu_*.json

Each cell is the engine's median step and real-time factor; a naive re-run-the-prefix row or a
Hugging Face row is shown with the engine row *of its own file* (same run) and their ratio. When
several files hold the same cell, the last file given wins (list re-runs last). The context
policy (`--set inference.context_policy=...`, default "hard") is a column.
"""

from __future__ import annotations

import argparse
import json


def _policy(overrides: list[str]) -> str:
    for o in overrides:
        if o.startswith("inference.context_policy="):
            return o.split("=", 1)[1]
    return "hard"


def load(paths: list[str]) -> dict:
    """{(config, sessions, length, policy): {"engine": row, bench: (row, engine row of the same file)}}."""
    cells: dict = {}
    for path in paths:
        with open(path) as f:
            data = json.load(f)
        policy = _policy(data.get("overrides", []))
        rows = [r for r in data["rows"] if "error" not in r]
        engines = {(r["config"], int(r["sessions"]), float(r["length_s"])): r for r in rows if r["bench"] == "engine"}
        for r in rows:
            key = (r["config"], int(r["sessions"]), float(r["length_s"]))
            if r["bench"] == "engine":
                cells.setdefault((*key, policy), {})["engine"] = r
            elif key in engines:  # a comparison row counts only beside an engine row of its own run
                cells.setdefault((*key, policy), {})[r["bench"]] = (r, engines[key])
    return cells


def _ratio(other: dict, engine: dict, name: str) -> str:
    ratio = other["median_ms"] / engine["median_ms"]
    faster = f"engine {ratio:.1f}x faster" if ratio >= 1 else f"{name} {1 / ratio:.2f}x faster"
    return f"{other['median_ms']:.1f} ms vs {engine['median_ms']:.1f} ms ({faster})"


def markdown(cells: dict) -> str:
    lines = ["| config | sessions | session length | policy | median step | p99 | RTF | KV MiB / session | "
             "naive prefix loop (same run) | HF transformers (same run) |", "|" + " --- |" * 10]
    order = {"tiny": 0, "small": 1, "small_moe": 2}
    for (cfg, n, secs, policy), c in sorted(cells.items(), key=lambda kv: (order.get(kv[0][0], 9), *kv[0])):
        if "engine" not in c:
            continue
        e = c["engine"]
        naive = _ratio(*c["naive_prefix"], "naive") if "naive_prefix" in c else ""
        hf = _ratio(*c["hf_transformers"], "HF") if "hf_transformers" in c else ""
        length = f"{secs / 60:.0f} min" if secs >= 60 else f"{secs:.0f} s"
        lines.append(f"| {cfg} | {n} | {length} | {policy} | {e['median_ms']:.1f} ms | {e['p99_ms']:.1f} ms | "
                     f"{e['rtf']:.2f} | {e['kv_mb_per_session']:.1f} | {naive} | {hf} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="+")
    print(markdown(load(ap.parse_args().files)))


if __name__ == "__main__":
    main()
