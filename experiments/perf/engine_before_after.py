"""The engine's (or the train step's) time at another commit and at this tree, in one run on one machine.

    python experiments/perf/engine_before_after.py --before=113f64c --configs=tiny,small \
        --sessions=1,4,16 --lengths=10,60 --rounds=3 \
        --json=experiments/perf/results/engine_before_after_cpu.json
    python experiments/perf/engine_before_after.py --bench=train --before=752ac65 \
        --configs=experiments/refusal/config.py --rounds=3 --json=experiments/perf/results/train_before_after_cpu.json

Why: a refactor of the forward path (the engine running the model's own blocks, issue 16) must
not make a micro-turn slower, and figures from different runs on this machine cannot be compared.
`--before` is checked out into a temporary git worktree; `streaming.py` (engine rows only, no naive
loop, no Hugging Face row) runs from the old tree and from this one, alternating, `--rounds` times,
each in its own process, so drift over the run hits both sides alike (`--after_set KEY=VALUE`: a
config override for this tree's side only, e.g. a new engine option the old tree does not have).
Each cell reports the median over rounds of each side's median step time and the ratio after /
before (< 1: faster now). The worktree is removed at the end. Time it on a quiet machine.

`--bench=train` runs `train_throughput.py` instead (forward, backward and AdamW of each config at
its own batch and window, `--ticks` timed steps): the train step before and after a change of the
model's code.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STREAMING = os.path.join("experiments", "perf", "streaming.py")
TRAIN = os.path.join("experiments", "perf", "train_throughput.py")


def _commit(ref: str, cwd: str) -> str:
    r = subprocess.run(["git", "rev-parse", "--verify", f"{ref}^{{commit}}"], cwd=cwd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"error: --before={ref!r} is not a commit of this repository")
    return r.stdout.strip()


def _run(tree: str, args, out: str, sets: list[str] = ()) -> list[dict]:
    if args.bench == "train":
        return _run_train(tree, args, out, sets)
    cmd = [sys.executable, os.path.join(tree, STREAMING), f"--configs={args.configs}", f"--sessions={args.sessions}",
           f"--lengths={args.lengths}", f"--ticks={args.ticks}", "--no-naive", "--no-hf", f"--json={out}"]
    cmd += [f"--set={kv}" for kv in sets]
    env = dict(os.environ, PYTHONPATH=tree)
    subprocess.run(cmd, cwd=tree, env=env, check=True, stdout=subprocess.DEVNULL)
    return [r for r in json.load(open(out))["rows"] if r["bench"] == "engine"]


def _run_train(tree: str, args, out: str, sets: list[str] = ()) -> list[dict]:
    """train_throughput.py's rows as cells (config as given, batch, window) with the median step in ms;
    a config file is the tree's own copy."""
    names = args.configs.split(",")
    configs = [os.path.join(tree, c) if c.endswith(".py") else c for c in names]
    if sets:
        configs = [c + "@" + "+".join(sets) for c in configs]
    cmd = [sys.executable, os.path.join(tree, TRAIN), f"--configs={','.join(configs)}", f"--steps={args.ticks}",
           "--batch_size=0", "--window=0", f"--out={out}"]
    env = dict(os.environ, PYTHONPATH=tree)
    subprocess.run(cmd, cwd=tree, env=env, check=True, stdout=subprocess.DEVNULL)
    rows = json.load(open(out))["rows"]
    return [dict(config=name, batch=r["batch"], window_micro_turns=r["window_micro_turns"],
                 median_ms=1e3 * r["step_s_median"]) for name, r in zip(names, rows, strict=True)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", required=True, help="commit (or ref) to compare against")
    ap.add_argument("--bench", choices=("engine", "train"), default="engine",
                    help="engine: streaming.py's engine rows; train: train_throughput.py's step")
    ap.add_argument("--configs", default="tiny,small")
    ap.add_argument("--sessions", default="1,4,16")
    ap.add_argument("--lengths", default="10,60")
    ap.add_argument("--ticks", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--after_set", action="append", default=[], metavar="KEY=VALUE",
                    help="config override for this tree's side only, e.g. "
                         "inference.decode_attention=live_window_batched")
    ap.add_argument("--json", default=os.path.join(REPO, "experiments/perf/results/engine_before_after_cpu.json"))
    args = ap.parse_args()
    if args.rounds < 1 or args.ticks < 1:
        sys.exit("error: --rounds and --ticks must be >= 1")
    before = _commit(args.before, REPO)
    after = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                                capture_output=True, text=True).stdout.strip())
    tmp = tempfile.mkdtemp(prefix="before_after_")
    old_tree = os.path.join(tmp, "before")
    subprocess.run(["git", "worktree", "add", "--detach", "-f", old_tree, before], cwd=REPO, check=True,
                   capture_output=True)
    keys = ("config", "batch", "window_micro_turns") if args.bench == "train" else ("config", "sessions", "length_s")
    times: dict[tuple, dict[str, list[float]]] = {}
    try:
        for k in range(args.rounds):
            for side, tree in (("before", old_tree), ("after", REPO)):
                sets = args.after_set if side == "after" else []
                rows = _run(tree, args, os.path.join(tmp, f"{side}_{k}.json"), sets)
                for r in rows:
                    cell = tuple(r[key] for key in keys)
                    times.setdefault(cell, {"before": [], "after": []})[side].append(r["median_ms"])
                print(f"[before_after] round {k + 1}/{args.rounds}: {side} done", flush=True)
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", old_tree], cwd=REPO, capture_output=True)
    cells = []
    for cell, t in sorted(times.items()):
        b, a = float(np.median(t["before"])), float(np.median(t["after"]))
        cells.append(dict(zip(keys, cell), before_ms=b, after_ms=a, ratio=a / b,
                          before_rounds_ms=t["before"], after_rounds_ms=t["after"]))
    w = max([8] + [len(str(c["config"])) for c in cells])
    print(f"\n{'config':{w}} {keys[1]:>8} {keys[2]:>8} {'before ms':>10} {'after ms':>9} {'after/before':>13}")
    for c in cells:
        print(f"{c['config']:{w}} {c[keys[1]]:>8} {c[keys[2]]:>8.0f} {c['before_ms']:>10.1f} "
              f"{c['after_ms']:>9.1f} {c['ratio']:>13.2f}")
    import jax

    from interaction_jax.results_io import write_record

    write_record(args.json, {"bench": args.bench, "before": before, "after": after + ("-dirty" if dirty else ""),
                             "rounds": args.rounds,
                             "ticks": args.ticks, "after_set": args.after_set,
                             "device": str(jax.devices()[0].device_kind), "cpu_count": os.cpu_count(),
                             "command": " ".join(sys.argv), "cells": cells})


if __name__ == "__main__":
    main()
