"""How fast could one micro-turn be on this machine? A floor for the engine's step, measured.

    python experiments/perf/decode_floor.py --configs=tiny,small --json=experiments/perf/results/decode_floor.json

The engine makes one model call per segment of the micro-turn (`engine.segments`: the input
block, then one call per output position whose input is the previous sample; 7 calls for the
default layout) and runs the flow-head ODE once per model-audio position. Whatever the code
around them, each call has to do the backbone's matmuls and each audio position the flow ODE.
This script times exactly that, with nothing else, on this device:

* `matmuls S=n`: a chain of the backbone's real weight shapes (per layer: q, k, v, o, gate, up,
  down; separate arrays, so nothing is sliced or copied) applied to n rows, float32 weights and,
  for comparison, bfloat16 weights with float32 accumulation;
* `flow head`: the model's own `sample_mel_keys` for one position (its ODE steps and solver);
* `floor`: the sum over the engine's segments of the matmul time at that segment's size, plus
  one flow ODE per audio position. It leaves out attention, embeddings, the text head, sampling
  and dMel encoding, so the real step can only be slower;
* `engine`: the engine's step (`streaming.py`'s `bench_engine`, one session at the end of a
  10 s session) in the same run, and its ratio to the floor.

Median of `--iters` calls after a compile call (`kernels.timeit`). Timings are never asserted in tests.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from kernels import timeit  # noqa: E402  (median of jit(fn) calls after a compile call)


def backbone_shapes(m) -> list[tuple[int, int]]:
    """(in, out) of every backbone matmul, layer by layer (dense layers: q, k, v, o, gate, up, down)."""
    d, hd = int(m.d_model), int(m.head_dim)
    per_layer = [(d, int(m.num_heads) * hd), (d, int(m.num_kv_heads) * hd), (d, int(m.num_kv_heads) * hd),
                 (int(m.num_heads) * hd, d), (d, int(m.ffn_dim)), (d, int(m.ffn_dim)), (int(m.ffn_dim), d)]
    return per_layer * int(m.num_layers)


def time_matmuls(shapes, rows: int, dtype, iters: int) -> float:
    """Median ms of x [rows, D] through the backbone's matmuls with its dataflow (attention left out:
    o takes q; the FFN is SwiGLU), weights in `dtype`, float32 accumulation."""
    import jax
    import jax.numpy as jnp

    keys = jax.random.split(jax.random.key(0), len(shapes))
    ws = [(0.02 * jax.random.normal(k, s, jnp.float32)).astype(dtype) for k, s in zip(keys, shapes, strict=True)]

    def mm(x, w):
        return jnp.dot(x.astype(dtype), w, preferred_element_type=jnp.float32)

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


def time_flow(config, iters: int) -> float:
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from interaction_jax.model.interaction_model import InteractionModel

    model = InteractionModel(config, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model)
    h = jnp.ones((1, model.d_model), jnp.float32)
    keys = jax.random.split(jax.random.key(0), 1)
    return timeit(lambda s, h, k: nnx.merge(graphdef, s).sample_mel_keys(h, k), state, h, keys, iters=iters)


def floor_rows(config_name: str, iters: int, engine: bool, ticks: int) -> list[dict]:
    import jax.numpy as jnp

    from interaction_jax.config_lib import load_config
    from interaction_jax.inference.engine import segments
    from interaction_jax.streams.layout import Kind, StreamLayout

    c = load_config(os.path.join(REPO, "configs", f"{config_name}.py"))
    layout = StreamLayout.from_config(c)
    sizes = [z - a for a, z in segments(layout)]
    shapes = backbone_shapes(c.model)
    params_m = sum(i * o for i, o in shapes) / 1e6
    rows, mm = [], {}
    for n in sorted(set(sizes)):
        for name, dt in (("float32", jnp.float32), ("bfloat16", jnp.bfloat16)):
            mm[(n, name)] = time_matmuls(shapes, n, dt, iters)
            rows.append(dict(config=config_name, part=f"matmuls S={n}", dtype=name, ms=mm[(n, name)],
                             note=f"{params_m:.1f}M backbone weights"))
    flow = time_flow(c, iters)
    audio = layout.block_slice(Kind.MODEL_AUDIO)
    n_audio = audio.stop - audio.start
    rows.append(dict(config=config_name, part="flow head (1 position)", dtype="float32", ms=flow,
                     note=f"{int(c.model.flow.ode_steps)} {c.model.flow.solver} steps"))
    for name in ("float32", "bfloat16"):
        floor = sum(mm[(n, name)] for n in sizes) + n_audio * flow
        rows.append(dict(config=config_name, part="floor per micro-turn", dtype=name, ms=floor,
                         note=f"{len(sizes)} calls {sizes} + {n_audio} flow ODEs; RTF {floor / 200:.2f}"))
    if engine:
        from streaming import bench_engine

        r = bench_engine(config_name, 1, 10.0, ticks)
        f32 = rows[-2]["ms"]
        rows.append(dict(config=config_name, part="engine step (10 s session)", dtype="float32", ms=r["median_ms"],
                         note=f"{r['median_ms'] / f32:.2f}x the float32 floor; RTF {r['rtf']:.2f}"))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", default="tiny,small")
    ap.add_argument("--iters", type=int, default=9)
    ap.add_argument("--ticks", type=int, default=5, help="engine micro-turns timed (the engine row)")
    ap.add_argument("--engine", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--json", default=os.path.join(REPO, "experiments/perf/results/decode_floor.json"))
    args = ap.parse_args()
    import jax

    rows = []
    for name in args.configs.split(","):
        rows += floor_rows(name, args.iters, args.engine, args.ticks)
        print(f"[decode_floor] {name} done", flush=True)
    print(f"\n{'config':<8} {'part':<30} {'dtype':<9} {'median ms':>10}  note")
    for r in rows:
        print(f"{r['config']:<8} {r['part']:<30} {r['dtype']:<9} {r['ms']:>10.1f}  {r['note']}")
    out = dict(device=str(jax.devices()[0]), jax=jax.__version__, iters=args.iters, rows=rows)
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(out, f, indent=1)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
