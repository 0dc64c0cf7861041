"""The committed form of an `evaluate --benchmarks=refusal` results.json: every metric and the
model's per-turn judgements, without the per-example outputs and the cascade's and the oracle's
judgements (those are the targets' own words, and most of the file's size).

    python experiments/refusal/keep_results.py runs/refusal/eval_typed/results.json \
        experiments/refusal/results_typed.json --workdir=runs/refusal/run
"""

from __future__ import annotations

import argparse
import json
import os
import sys

NOTE = ("evaluate's results.json without the per-example outputs and without the cascade's and the oracle's "
        "per-turn judgements (every metric kept; the model's judgements kept)")


def keep(results: dict, workdir: str | None = None) -> dict:
    """`results` with what the committed files leave out removed (a new dict; the input is not changed)."""
    d = json.loads(json.dumps(results))
    d.pop("examples", None)  # evaluate's per-example outputs of every system, by benchmark
    for system, metrics in d["metrics"].items():
        r = metrics.get("refusal", {})
        if isinstance(r.get("examples"), list):  # per-example outputs; an int is the count, a metric
            r.pop("examples")
        if system != "model":
            r.pop("judgements", None)
    for by_mode in d.get("metrics_by_mode", {}).values():
        for m in by_mode.values() if isinstance(by_mode, dict) else []:
            for r in m.values() if isinstance(m, dict) else []:
                if isinstance(r, dict) and isinstance(r.get("examples"), list):
                    r.pop("examples")
    if workdir:
        d["workdir"] = workdir
    d["note"] = NOTE
    return d


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("src", help="an evaluate results.json (--benchmarks=refusal)")
    ap.add_argument("dst", help="where the committed file goes (replaced atomically)")
    ap.add_argument("--workdir", help="the run's workdir as the README names it (the record keeps it relative)")
    args = ap.parse_args(argv)
    try:
        with open(args.src) as f:
            results = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        print(f"error: {args.src}: not a readable results.json ({e})", file=sys.stderr)
        return 2
    if "refusal" not in results.get("metrics", {}).get("model", {}):
        print(f"error: {args.src}: no refusal metrics for the model (expected evaluate --benchmarks=refusal output)",
              file=sys.stderr)
        return 2
    if os.path.abspath(args.src) == os.path.abspath(args.dst):
        print("error: dst is src: the full results.json would be replaced (write the kept form elsewhere)",
              file=sys.stderr)
        return 2
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    from interaction_jax.results_io import write_json

    write_json(args.dst, keep(results, args.workdir))
    print(f"wrote {args.dst}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
