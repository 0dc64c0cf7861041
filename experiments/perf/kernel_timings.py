"""Pallas kernel benchmarks: prints a table and writes JSON.

    python experiments/perf/kernel_timings.py [--out=experiments/perf/results/kernels.json] [--iters=20]

On a GPU: flash attention (fwd and fwd+bwd) vs jax.nn.dot_product_attention (XLA and cuDNN) at
training shapes; split-K decode attention vs the dense reference at micro-turn shapes; MoE
gather+gemv vs Pallas grouped matmul vs jax.lax.ragged_dot at decode shapes (1-64 tokens, 8-64
experts); batch-invariant matmul vs plain x @ w. On CPU the kernels are not compiled (interpret
mode is a debugger, not a fast path), so only the references run, at tiny shapes, and the table
says so. Timings are medians of --iters runs after a warm-up (compile) call.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)

from pallas_kernels import batch_invariant as bi  # noqa: E402
from pallas_kernels.decode_attention import decode_attention, decode_attention_reference  # noqa: E402
from pallas_kernels.flash_attention import flash_attention  # noqa: E402
from pallas_kernels.gather_gemv import gather_gemv, gather_gemv_reference  # noqa: E402
from pallas_kernels.grouped_matmul import gmm, gmm_reference  # noqa: E402


def timeit(fn, *args, iters: int) -> float:
    """Median wall time (ms) of jit(fn)(*args) after one compile call."""
    f = jax.jit(fn)
    jax.block_until_ready(f(*args))
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        jax.block_until_ready(f(*args))
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def try_time(fn, *args, iters: int):
    try:
        return round(timeit(fn, *args, iters=iters), 4), None
    except Exception as e:  # e.g. cuDNN unavailable for a shape/dtype: record, keep going
        return None, f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"


def rand(key, shape, dtype):
    return jax.random.normal(jax.random.PRNGKey(key), shape, jnp.float32).astype(dtype)


def bench_flash(gpu: bool, iters: int) -> list[dict]:
    dt = jnp.bfloat16 if gpu else jnp.float32
    shapes = [(4, 2048, 16, 4, 128), (2, 4096, 16, 4, 128)] if gpu else [(1, 128, 4, 2, 32)]
    rows = []
    for b, s, h, kvh, hd in shapes:
        q, k, v = rand(0, (b, s, h, hd), dt), rand(1, (b, s, kvh, hd), dt), rand(2, (b, s, kvh, hd), dt)
        kernel = "triton" if gpu else "reference"
        impls = {f"flash_{kernel}": lambda q, k, v, i=kernel: flash_attention(q, k, v, implementation=i)}
        impls["dpa_xla"] = lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation="xla")
        if gpu:
            impls["dpa_cudnn"] = lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=True,
                                                                              implementation="cudnn")
        for name, fn in impls.items():
            grad = jax.grad(lambda q, k, v, fn=fn: fn(q, k, v).astype(jnp.float32).sum(), argnums=(0, 1, 2))
            fwd, err = try_time(fn, q, k, v, iters=iters)
            bwd, err2 = try_time(grad, q, k, v, iters=iters)
            rows.append(dict(bench="flash_attention", shape=f"B{b} S{s} H{h} KVH{kvh} hd{hd} {jnp.dtype(dt).name}",
                             impl=name, fwd_ms=fwd, fwd_bwd_ms=bwd, error=err or err2))
    return rows


def bench_decode(gpu: bool, iters: int) -> list[dict]:
    dt = jnp.bfloat16 if gpu else jnp.float32
    shapes = [(8, 4, 4096, 16, 4, 128), (64, 4, 4096, 16, 4, 128)] if gpu else [(4, 4, 256, 4, 2, 32)]
    rows = []
    for b, s, t, h, kvh, hd in shapes:
        q, k, v = rand(0, (b, s, h, hd), dt), rand(1, (b, t, kvh, hd), dt), rand(2, (b, t, kvh, hd), dt)
        lengths = jnp.linspace(s, t, b).astype(jnp.int32)
        impls = {"reference": lambda q, k, v, n: decode_attention_reference(q, k, v, n)}
        if gpu:
            impls["pallas_split_k"] = lambda q, k, v, n: decode_attention(q, k, v, n, implementation="triton")
        for name, fn in impls.items():
            ms, err = try_time(fn, q, k, v, lengths, iters=iters)
            rows.append(dict(bench="decode_attention", shape=f"slots{b} S{s} T{t} H{h} KVH{kvh} hd{hd}", impl=name,
                             fwd_ms=ms, error=err))
    return rows


def sorted_path(mm, num_experts: int):
    """The training/prefill MoE path (sort by expert -> grouped matmul x3 -> unsort) with matmul `mm`."""

    def fn(x, ids, cw, wg, wu, wd):
        t, top_k = ids.shape
        flat = ids.reshape(-1)
        order = jnp.argsort(flat, stable=True)
        xs = jnp.take(x, order // top_k, axis=0)
        sizes = jnp.bincount(flat, length=num_experts).astype(jnp.int32)
        h = jax.nn.silu(mm(xs, wg, sizes)) * mm(xs, wu, sizes)
        out = jnp.take(mm(h, wd, sizes), jnp.argsort(order), axis=0).reshape(t, top_k, -1)
        return jnp.einsum("tkd,tk->td", out.astype(jnp.float32), cw).astype(x.dtype)

    return fn


def bench_moe(gpu: bool, iters: int) -> list[dict]:
    dt = jnp.bfloat16 if gpu else jnp.float32
    d, f = (2048, 1024) if gpu else (64, 128)
    cases = [(t, e, kk) for t in (1, 8, 64) for e, kk in ((8, 2), (64, 8))] if gpu else [(1, 8, 2), (8, 8, 2)]
    rows = []
    for t, e, kk in cases:
        x = rand(0, (t, d), dt)
        wg, wu, wd = rand(1, (e, d, f), dt), rand(2, (e, d, f), dt), rand(3, (e, f, d), dt)
        keys = jax.random.split(jax.random.PRNGKey(4), t)
        ids = jnp.stack([jax.random.permutation(key, e)[:kk] for key in keys]).astype(jnp.int32)
        cw = jnp.full((t, kk), 1.0 / kk, jnp.float32)

        impls = {"ragged_dot": sorted_path(gmm_reference, e), "gather_reference": gather_gemv_reference}
        if gpu:
            impls["pallas_gmm"] = sorted_path(lambda a, w, g: gmm(a, w, g, implementation="triton"), e)
            impls["pallas_gather_gemv"] = lambda *a: gather_gemv(*a, implementation="triton")
        for name, fn in impls.items():
            ms, err = try_time(fn, x, ids, cw, wg, wu, wd, iters=iters)
            rows.append(dict(bench="moe_decode", shape=f"T{t} E{e} k{kk} D{d} F{f}", impl=name, fwd_ms=ms, error=err))
    return rows


def bench_batch_invariant(gpu: bool, iters: int) -> list[dict]:
    dt = jnp.bfloat16 if gpu else jnp.float32
    k = n = 4096 if gpu else 256
    rows = []
    for m in (1, 64, 1024) if gpu else (1, 64):
        x, w = rand(0, (m, k), dt), rand(1, (k, n), dt)
        impls = {"plain_matmul": lambda x, w: x @ w,
                 "batch_invariant": lambda x, w: bi.matmul(x, w, implementation="triton" if gpu else "reference")}
        for name, fn in impls.items():
            ms, err = try_time(fn, x, w, iters=iters)
            rows.append(dict(bench="batch_invariant_matmul", shape=f"M{m} K{k} N{n}", impl=name, fwd_ms=ms, error=err))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join(REPO, "experiments/perf/results/kernels.json"))
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--only", default="", help="comma list of: flash,decode,moe,batch_invariant")
    args = parser.parse_args()
    backend = jax.default_backend()
    gpu = backend == "gpu"
    device = jax.devices()[0].device_kind
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout
    note = "" if gpu else "NO GPU: kernels not compiled; references only, tiny shapes (numbers are not kernel timings)"
    benches = {"flash": bench_flash, "decode": bench_decode, "moe": bench_moe, "batch_invariant": bench_batch_invariant}
    chosen = [s for s in args.only.split(",") if s] or list(benches)
    rows = []
    for name in chosen:
        rows += benches[name](gpu, args.iters)
    print(f"device: {device} ({backend}), jax {jax.__version__}, commit {commit.strip()}")
    if note:
        print(note)
    header = f"{'bench':<24}{'shape':<40}{'impl':<20}{'fwd_ms':>10}{'fwd_bwd_ms':>12}  error"
    print(header)
    print("-" * len(header))
    fmt = lambda v: "-" if v is None else f"{v:.3f}"
    for r in rows:
        print(f"{r['bench']:<24}{r['shape']:<40}{r['impl']:<20}{fmt(r.get('fwd_ms')):>10}"
              f"{fmt(r.get('fwd_bwd_ms')):>12}  {r.get('error') or ''}")
    from interaction_jax.results_io import write_record

    write_record(args.out, dict(device=device, backend=backend, jax=jax.__version__, commit=commit.strip(), note=note,
                                rows=rows))


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
