"""MoE expert backends at streaming sizes: which one should the engine use for T tokens?

    python experiments/perf/moe_backends.py --config=configs/small_moe.py \
        --tokens=1,2,4,16,29,116,464 --json=experiments/perf/results/moe_backends_cpu.json

One MoE layer's expert compute (`expert_compute`, the config's E, k, D, F, float32) for T tokens
with random top-k routing, each backend timed in the same run: "gather" (reads T x k expert
matrices), "ragged_dot" (the training backend), "dense" (every expert on every token) and "auto"
(the engine's default, `inference.moe_impl`). T = 1 is one session's decode call, 29 one
session's input block (the default layout), 16 / 464 the same for 16 sessions. Median of
`--iters` calls after a compile call (`kernels.timeit`); the best backend per T is marked.
Timings are never asserted in tests.
"""

from __future__ import annotations

import argparse
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from kernel_timings import timeit  # noqa: E402  (median of jit(fn) calls after a compile call)

IMPLS = ("gather", "ragged_dot", "dense", "auto")


def main() -> None:
    import jax
    import jax.numpy as jnp

    from interaction_jax.config_lib import load_config
    from interaction_jax.model.moe import ExpertWeights, Routing, expert_compute

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=os.path.join(REPO, "configs/small_moe.py"))
    ap.add_argument("--tokens", default="1,2,4,16,29,116,464")
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--json", default=os.path.join(REPO, "experiments/perf/results/moe_backends.json"))
    args = ap.parse_args()
    m = load_config(args.config).model
    e, k, d, f = int(m.moe.num_experts), int(m.moe.top_k), int(m.d_model), int(m.moe.expert_ffn_dim)
    ks = jax.random.split(jax.random.key(0), 5)
    w = ExpertWeights(jax.random.normal(ks[0], (e, d, f)) * 0.02, jax.random.normal(ks[1], (e, d, f)) * 0.02,
                      jax.random.normal(ks[2], (e, f, d)) * 0.02)
    rows = []
    print(f"E={e} top-{k} D={d} F={f} float32, {jax.devices()[0].device_kind}")
    print(f"{'T':>5} " + " ".join(f"{n:>11}" for n in IMPLS) + "   (ms, median)")
    for t in (int(x) for x in args.tokens.split(",")):
        x = jax.random.normal(ks[3], (t, d))
        ids = jnp.argsort(jax.random.uniform(ks[4], (t, e)), axis=-1)[:, :k].astype(jnp.int32)
        routing = Routing(ids, jnp.full((t, k), 1.0 / k), None)
        row = {"tokens": t}
        for impl in IMPLS:
            row[impl] = timeit(lambda x, r, w, impl=impl: expert_compute(x, r, w, impl), x, routing, w,
                               iters=args.iters)
        best = min(IMPLS[:3], key=lambda n: row[n])
        row["best"] = best
        rows.append(row)
        print(f"{t:>5} " + " ".join(f"{row[n]:>10.3f}{'*' if n == best else ' '}" for n in IMPLS), flush=True)
    from interaction_jax.results_io import write_record

    write_record(args.json, {"device": str(jax.devices()[0].device_kind), "cpu_count": os.cpu_count(),
                             "config": args.config, "experts": e, "top_k": k, "d_model": d, "expert_ffn_dim": f,
                             "rows": rows})


if __name__ == "__main__":
    main()
