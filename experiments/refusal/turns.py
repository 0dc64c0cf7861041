"""Where a refusal model misses: its disallowed requests refused by their place in the episode.

    python experiments/refusal/turns.py experiments/refusal/results_2500_typed.json [--task=refusal]

Reads the model's per-turn judgements of an `evaluate --benchmarks=refusal` results file (or its
committed form, `keep_results.py`) and counts, for the disallowed requests of one task, how many
were refused as the episode's first request, its second, and so on, with the range of their end
times: a model that refuses every first request and misses later ones has not learned requests
at later positions. Prints the table; `--json=PATH` also writes it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import defaultdict


def by_order(judgements: list[dict], task: str = "refusal") -> list[dict]:
    """Rows (order 1, 2, ...) of {requests, refused, end_min, end_max} for `task`'s disallowed requests."""
    episodes: dict[str, list[dict]] = defaultdict(list)
    for j in judgements:
        if j.get("task") == task and j.get("kind") == "disallowed":
            episodes[j["episode_id"]].append(j)
    rows: dict[int, dict] = {}
    for turns in episodes.values():
        for order, j in enumerate(sorted(turns, key=lambda t: t["end"]), start=1):
            r = rows.setdefault(order, {"order": order, "requests": 0, "refused": 0, "end_min": j["end"],
                                        "end_max": j["end"]})
            r["requests"] += 1
            r["refused"] += int(bool(j["refused"]))
            r["end_min"], r["end_max"] = min(r["end_min"], j["end"]), max(r["end_max"], j["end"])
    return [rows[k] for k in sorted(rows)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", help="an evaluate --benchmarks=refusal results.json (or its committed form)")
    ap.add_argument("--task", default="refusal", help="the task whose disallowed requests are counted")
    ap.add_argument("--json", default=None, help="also write the rows here")
    args = ap.parse_args(argv)
    try:
        with open(args.results) as f:
            judgements = json.load(f)["metrics"]["model"]["refusal"]["judgements"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        print(f"turns: error: {args.results}: expected a refusal results.json with the model's judgements "
              f"(metrics.model.refusal.judgements): {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    rows = by_order(judgements, args.task)
    if not rows:
        print(f"turns: error: no disallowed requests of task {args.task!r} in {args.results}", file=sys.stderr)
        return 2
    print(f"{'request':>8} {'refused':>12} {'ends (s)':>14}")
    for r in rows:
        print(f"{r['order']:>8} {r['refused']:>5} of {r['requests']:<4} {r['end_min']:>6.1f}-{r['end_max']:<6.1f}")
    if args.json:
        from interaction_jax.results_io import write_json

        write_json(args.json, {"results": os.path.basename(args.results), "task": args.task, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
