"""How fast could one micro-turn be on this machine? The engine's step against two floors, measured.

    python experiments/perf/decode_floor.py --configs=tiny,small --json=experiments/perf/results/decode_floor.json

The engine makes one model call per segment of the micro-turn (`engine.segments`: the input
block, then one call per output position whose input is the previous sample; 7 calls for the
default layout) and runs the flow-head ODE once per model-audio position. In one run, on this
device, the script reports:

* probes: memory read GB/s (a large float32 array reduced by XLA, `--probe_mb`) and float32
  matmul GFLOP/s at `--probe_n`² (`machine_floor.py`; best of `--iters`);
* `machine floor`: per call the least time from those two rates, max(bytes read / bandwidth,
  FLOPs / peak), counting the backbone and text-head weights, the KV rows attended (the cache at
  the engine row's first timed micro-turn) and the flow ODEs (what is counted and left out:
  `machine_floor.py`);
* `matmuls S=n`: a chain of the backbone's real weight shapes (per layer: q, k, v, o, gate, up,
  down; separate arrays, so nothing is sliced or copied) applied to n rows: float32 weights
  stored [in, out] (`x @ W`, as the engine stores them), stored [out, in] and contracted on their
  last axis (PyTorch's layout), and bfloat16 [in, out] weights with float32 accumulation;
* `flow head`: the model's own `sample_mel_keys` for one position (its ODE steps and solver);
* `floor` (float32 and bfloat16 [in, out]) and `best-XLA floor` (the faster float32 layout at
  each call): the sum over the calls of the matmul chain's time plus one flow ODE per audio
  position. These leave out attention, embeddings, the text head, sampling and dMel encoding;
* `engine`: the engine's step (`streaming.py`'s `bench_engine`, one session at the end of a
  10 s session) in the same run, as a ratio to each floor.

Median of `--iters` calls after a compile call (`kernels.timeit`). Timings are never asserted in tests.
"""

from __future__ import annotations

import argparse
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import machine_floor as mf  # noqa: E402
from kernel_timings import timeit  # noqa: E402  (median of jit(fn) calls after a compile call)

from interaction_jax.errors import UserError  # noqa: E402

SESSION_S = 10.0  # the engine row's session length
LAYOUTS = ("[in,out]", "[out,in]")  # float32 weight storage of the matmul chain


def time_matmuls(shapes, rows: int, dtype, iters: int, layout: str = "[in,out]") -> float:
    """Median ms of x [rows, D] through the backbone's matmuls with its dataflow (attention left out:
    o takes q; the FFN is SwiGLU), weights in `dtype` stored `layout`, float32 accumulation."""
    import jax
    import jax.numpy as jnp

    out_in = layout == "[out,in]"
    keys = jax.random.split(jax.random.key(0), len(shapes))
    ws = [(0.02 * jax.random.normal(k, s[::-1] if out_in else s, jnp.float32)).astype(dtype)
          for k, s in zip(keys, shapes, strict=True)]
    contract = (((1,), (1 if out_in else 0,)), ((), ()))

    def mm(x, w):
        return jax.lax.dot_general(x.astype(dtype), w, contract, preferred_element_type=jnp.float32)

    @jax.jit
    def layers(x, ws):
        for i in range(0, len(ws), 7):
            wq, wk, wv, wo, wg, wu, wd = ws[i:i + 7]
            q = mm(x, wq)
            # k, v feed attention, which is left out: kept alive (XLA does not fold 0.0 * x)
            x = x + mm(q, wo) + 0.0 * (jnp.sum(mm(x, wk)) + jnp.sum(mm(x, wv)))
            x = x + mm(jax.nn.silu(mm(x, wg)) * mm(x, wu), wd)
        return x

    x = jnp.ones((rows, shapes[0][0]), jnp.float32)
    return timeit(layers, x, ws, iters=iters)


def time_flow(model, iters: int) -> float:
    import jax
    import jax.numpy as jnp
    from flax import nnx

    graphdef, state = nnx.split(model)
    h = jnp.ones((1, model.d_model), jnp.float32)
    keys = jax.random.split(jax.random.key(0), 1)
    return timeit(lambda s, h, k: nnx.merge(graphdef, s).sample_mel_keys(h, k), state, h, keys, iters=iters)


def first_timed_cache(layout, ticks: int) -> int:
    """Positions in the cache at the engine row's first timed micro-turn (`bench_engine`)."""
    from streaming import start_turn

    return (start_turn(SESSION_S, ticks, layout.micro_turn_s) + 1) * layout.positions_per_turn


def config(config_name: str):
    """configs/<name>.py; the floor counts dense, full-causal layers only."""
    from interaction_jax.config_lib import load_config

    c = load_config(os.path.join(REPO, "configs", f"{config_name}.py"))
    m = c.model
    if str(m.layer_pattern) != "dense" or int(m.sliding_window):
        raise UserError(f"--configs={config_name}: the floor counts dense full-causal layers only "
                        f"(model.layer_pattern={m.layer_pattern!r}, model.sliding_window={m.sliding_window})")
    return c


def load(config_name: str):
    """(config, model, layout) of configs/<name>.py."""
    from flax import nnx

    from interaction_jax.model.interaction_model import InteractionModel
    from interaction_jax.streams.layout import StreamLayout

    c = config(config_name)
    return c, InteractionModel(c, rngs=nnx.Rngs(0)), StreamLayout.from_config(c)


def floor_rows(config_name: str, iters: int, engine: bool, ticks: int, probes: dict) -> list[dict]:
    import jax.numpy as jnp

    from interaction_jax.inference.engine import segments
    from interaction_jax.streams.layout import Kind

    c, model, layout = load(config_name)
    m, fh, turn_ms = c.model, model.flow, 1e3 * layout.micro_turn_s
    rate = (probes["bandwidth"]["best_gb_s"], probes["compute"]["best_gflop_s"])
    segs = segments(layout)
    sizes = [z - a for a, z in segs]
    audio = layout.block_slice(Kind.MODEL_AUDIO)
    n_audio = audio.stop - audio.start
    shapes = mf.backbone_shapes(m)
    rows, mm = [], {}  # mm[(rows, dtype, layout)]: median ms of the matmul chain
    for n in sorted(set(sizes)):
        for name, dt, lay in (("float32", jnp.float32, LAYOUTS[0]), ("float32", jnp.float32, LAYOUTS[1]),
                              ("bfloat16", jnp.bfloat16, LAYOUTS[0])):
            mm[(n, name, lay)] = time_matmuls(shapes, n, dt, iters, lay)
            rows.append(dict(config=config_name, part=f"matmuls S={n}", dtype=name, layout=lay, ms=mm[(n, name, lay)],
                             note=f"{sum(i * o for i, o in shapes) / 1e6:.1f}M backbone weights stored {lay}"))
    best = {n: min(LAYOUTS, key=lambda lay: mm[(n, "float32", lay)]) for n in sizes}

    flow = time_flow(model, iters)
    ode = mf.flow_ode(int(m.d_model), fh.frames, fh.n_mels, fh.hidden_dim, len(fh.ups),
                      int(m.flow.ode_steps), str(m.flow.solver))
    rows.append(dict(config=config_name, part="flow head (1 position)", dtype="float32", ms=flow,
                     machine_ms=ode.ms(*rate), note=f"{int(m.flow.ode_steps)} {m.flow.solver} steps; "
                                                    f"machine floor {ode.ms(*rate):.3f} ms"))

    cached0 = first_timed_cache(layout, ticks)
    machine = n_audio * ode.ms(*rate)
    for i, (a, z) in enumerate(segs):
        n, w = z - a, mf.model_call(m, model.vocab_size, z - a, cached0 + a)
        machine += w.ms(*rate)
        rows.append(dict(config=config_name, part=f"call {i} S={n}", dtype="float32", ms=w.ms(*rate), rows=n,
                         cached=cached0 + a, mb_read=w.bytes / 1e6, gflop=w.flops / 1e9, bound=w.bound(*rate),
                         best_xla_ms=mm[(n, "float32", best[n])], best_layout=best[n],
                         floor_ms=mm[(n, "float32", LAYOUTS[0])],
                         note=f"machine floor, {w.bound(*rate)}-bound ({w.bytes / 1e6:.1f} MB, "
                              f"{w.flops / 1e9:.3f} GFLOP, {cached0 + a} cached); best XLA "
                              f"{mm[(n, 'float32', best[n])]:.2f} ms {best[n]}"))

    calls = f"{len(sizes)} calls {sizes} + {n_audio} flow ODEs"
    totals = [("machine floor per micro-turn", "float32", machine),
              ("best-XLA floor per micro-turn", "float32", sum(mm[(n, "float32", best[n])] for n in sizes))]
    totals += [("floor per micro-turn", name, sum(mm[(n, name, LAYOUTS[0])] for n in sizes))
               for name in ("float32", "bfloat16")]
    for part, name, ms in totals:
        ms += 0.0 if part.startswith("machine") else n_audio * flow
        rows.append(dict(config=config_name, part=part, dtype=name, ms=ms, note=f"{calls}; RTF {ms / turn_ms:.2f}"))
    if engine:
        from streaming import bench_engine

        r = bench_engine(config_name, 1, SESSION_S, ticks)
        f32 = {x["part"]: x["ms"] for x in rows if x["dtype"] == "float32"}
        ratios = dict(x_machine_floor=r["median_ms"] / f32["machine floor per micro-turn"],
                      x_best_xla_floor=r["median_ms"] / f32["best-XLA floor per micro-turn"],
                      x_floor=r["median_ms"] / f32["floor per micro-turn"])
        rows.append(dict(config=config_name, part="engine step (10 s session)", dtype="float32", ms=r["median_ms"],
                         **ratios, note=f"{ratios['x_machine_floor']:.2f}x the machine floor, "
                                        f"{ratios['x_best_xla_floor']:.2f}x the best-XLA floor, "
                                        f"{ratios['x_floor']:.2f}x the float32 floor; RTF {r['rtf']:.2f}"))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", default="tiny,small")
    ap.add_argument("--iters", type=int, default=9)
    ap.add_argument("--ticks", type=int, default=20, help="engine micro-turns timed (the engine row)")
    ap.add_argument("--engine", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--probe_mb", type=int, default=512, help="MiB of float32 read by the bandwidth probe")
    ap.add_argument("--probe_n", type=int, default=2048, help="side of the compute probe's square matmul")
    ap.add_argument("--json", default=os.path.join(REPO, "experiments/perf/results/decode_floor.json"))
    args = ap.parse_args()
    if min(args.iters, args.ticks, args.probe_mb, args.probe_n) < 1:
        ap.error("--iters, --ticks, --probe_mb and --probe_n must be >= 1")
    names = args.configs.split(",")
    try:
        for name in names:
            config(name)
    except UserError as e:
        ap.error(str(e))
    import jax

    probes = dict(bandwidth=mf.bandwidth_probe(args.probe_mb, args.iters),
                  compute=mf.compute_probe(args.probe_n, args.iters))
    print(f"[decode_floor] probes: {probes['bandwidth']['best_gb_s']:.1f} GB/s read "
          f"({probes['bandwidth']['how']} of {args.probe_mb} MiB), {probes['compute']['best_gflop_s']:.1f} "
          f"GFLOP/s (f32 matmul {args.probe_n}^2); best of {args.iters}", flush=True)
    rows = []
    for name in names:
        rows += floor_rows(name, args.iters, args.engine, args.ticks, probes)
        print(f"[decode_floor] {name} done", flush=True)
    print(f"\n{'config':<8} {'part':<30} {'dtype':<9} {'layout':<9} {'ms':>10}  note")
    for r in rows:
        lay = r.get("layout", "")
        print(f"{r['config']:<8} {r['part']:<30} {r['dtype']:<9} {lay:<9} {r['ms']:>10.2f}  {r['note']}")
    out = dict(device=str(jax.devices()[0]), jax=jax.__version__, iters=args.iters, ticks=args.ticks,
               probes=probes, rows=rows)
    from interaction_jax.results_io import write_record

    write_record(args.json, out)


if __name__ == "__main__":
    main()
