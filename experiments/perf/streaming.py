"""Streaming benchmark: per-micro-turn step time and real-time factor of the engine.

    python experiments/perf/streaming.py --configs=tiny,small,small_moe --sessions=1,4,16 \
        --lengths=10,60,300 --ticks=20 --json=experiments/perf/results/streaming.json

For each (config, concurrent sessions, session length L) it builds a `StreamEngine` with the
"hard" context policy sized to L, starts every slot `--ticks` micro-turns before the end of an
L-second session (the step attends over the live context only, so its cost depends on how far
into the session it is; the cache content is irrelevant to timing), runs `--ticks` micro-turns
with all slots active and reports median / p99 step time and RTF = step / 200 ms. Side by side, for the
shortest length, a naive loop that re-runs the whole prefix through the jitted training forward
each micro-turn (the cost of a serving stack without a persistent cache), and the ratio.
Hugging Face transformers (PyTorch, CPU) runs the same micro-turn call pattern with a Llama
model of the backbone's dimensions and its own KV cache (`bench_hf`; no flow head) when `torch`
and `transformers` are installed (optional benchmark dependency, not a runtime one; `--hf` /
`--no-hf` force it). Timings are never
asserted in tests; MoE configs stream with the engine's default expert backend
(`inference.moe_impl=auto`: the routed experts gathered for decode calls, all experts densely
for the input block on CPU; `moe_backends.py`), the naive loop with the training backend, and
the Hugging Face row is a Mixtral of the same experts.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)


EXTRA_OVERRIDES: list[str] = []  # --set key=value, applied to every config


def start_turn(seconds: float, ticks: int, micro_turn_s: float) -> int:
    """Micro-turn to start timing at so that the `ticks` timed turns are the last of the session."""
    return max(int(round(seconds / micro_turn_s)) - ticks - 1, 0)


def _engine(config_name: str, sessions: int, seconds: float):
    from flax import nnx

    from interaction_jax.config_lib import load_config
    from interaction_jax.inference.engine import StreamEngine
    from interaction_jax.model.interaction_model import InteractionModel

    overrides = ["inference.context_policy=hard", f"inference.max_session_seconds={seconds}",
                 f"inference.slots={sessions}"]
    overrides += EXTRA_OVERRIDES
    c = load_config(os.path.join(REPO, "configs", f"{config_name}.py"), overrides)
    model = InteractionModel(c, rngs=nnx.Rngs(0))
    return c, model, StreamEngine(c, model)


def bench_engine(config_name: str, sessions: int, seconds: float, ticks: int) -> dict:
    import jax.numpy as jnp

    from interaction_jax.inference.cache import memory_report

    c, model, engine = _engine(config_name, sessions, seconds)
    for s in range(sessions):
        engine.reset(s, seed=s)
    turn = start_turn(seconds, ticks, engine.layout.micro_turn_s)
    engine.state = engine.state._replace(
        length=jnp.full((sessions,), turn * engine.layout.positions_per_turn, jnp.int32),
        turn=jnp.full((sessions,), turn, jnp.int32))
    inputs = engine.empty_inputs()
    inputs["active"][:] = True
    rs = np.random.RandomState(0)
    t0 = time.perf_counter()
    engine.step(inputs)
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(ticks):
        inputs["dmel"][:] = rs.randint(0, 16, inputs["dmel"].shape)
        t0 = time.perf_counter()
        engine.step(inputs)
        times.append(time.perf_counter() - t0)
    mem = memory_report(engine.state, engine.policy, engine.layout)
    med, p99 = float(np.median(times)), float(np.percentile(times, 99))
    return dict(bench="engine", config=config_name, sessions=sessions, length_s=seconds, median_ms=med * 1e3,
                p99_ms=p99 * 1e3, rtf=med / engine.layout.micro_turn_s, compile_s=compile_s,
                kv_mb_per_session=mem["kv_bytes_per_session"] / 2**20)


def bench_naive(config_name: str, sessions: int, seconds: float, ticks: int) -> dict:
    """Re-runs the whole prefix (the training forward on [0, t]) for the last `ticks` micro-turns."""
    import jax

    from interaction_jax.model.interaction_model import dummy_batch

    c, model, _ = _engine(config_name, 1, 1.0)
    from flax import nnx

    graphdef, state = nnx.split(model)
    fwd = jax.jit(lambda s, b: nnx.merge(graphdef, s)(b)["hidden"])
    n_turns = int(round(seconds / 0.2))
    batch = dummy_batch(c, sessions, n_turns)
    fwd(state, batch).block_until_ready()  # compile once at the full length (the cheapest naive variant)
    times = []
    for _ in range(min(ticks, 5)):
        t0 = time.perf_counter()
        fwd(state, batch).block_until_ready()
        times.append(time.perf_counter() - t0)
    med = float(np.median(times))
    return dict(bench="naive_prefix", config=config_name, sessions=sessions, length_s=seconds, median_ms=med * 1e3,
                p99_ms=float(np.percentile(times, 99)) * 1e3, rtf=med / 0.2)


def bench_hf(config_name: str, sessions: int, seconds: float, ticks: int) -> dict:
    """The engine's micro-turn call pattern through Hugging Face transformers (PyTorch; on the GPU
    when torch sees one, so a GPU engine row has its peer on the same device).

    A `LlamaForCausalLM` (dense) or `MixtralForCausalLM` (MoE: same experts, width, top-k) of the
    config's backbone dimensions (width, layers, GQA heads, head dim, FFN, text vocabulary; random
    weights) with its own KV cache (`DynamicCache`): the cache is
    prefilled to the same session position as the engine row, then each micro-turn makes the same
    model calls as the engine (`engine.segments`: the input block, then one call per output
    position, 7 for the default layout) on random input embeddings. It has no flow head, sampling
    or dMel encoding, so it does *less* work per micro-turn than the engine.
    """
    import torch
    import transformers

    from interaction_jax.config_lib import load_config
    from interaction_jax.inference.engine import segments
    from interaction_jax.streams.layout import StreamLayout
    from interaction_jax.streams.tokenizer import make_tokenizer

    c = load_config(os.path.join(REPO, "configs", f"{config_name}.py"), EXTRA_OVERRIDES)
    m = c.model
    layout = StreamLayout.from_config(c)
    segs = segments(layout)
    P = layout.positions_per_turn
    turn = start_turn(seconds, ticks, layout.micro_turn_s)
    dims = dict(
        vocab_size=make_tokenizer(c.text).vocab_size, hidden_size=m.d_model,
        num_hidden_layers=m.num_layers, num_attention_heads=m.num_heads, num_key_value_heads=m.num_kv_heads,
        head_dim=m.head_dim, max_position_embeddings=(turn + ticks + 2) * P, tie_word_embeddings=False)
    torch.manual_seed(0)
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    if str(m.layer_pattern) == "moe":  # every layer MoE: a Mixtral with the same experts and top-k
        cfg = transformers.MixtralConfig(intermediate_size=m.moe.expert_ffn_dim, num_local_experts=m.moe.num_experts,
                                         num_experts_per_tok=m.moe.top_k, **dims)
        model = transformers.MixtralForCausalLM(cfg).eval()
    elif str(m.layer_pattern) == "dense":
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(intermediate_size=m.ffn_dim, **dims)).eval()
    else:
        raise ValueError(f"bench_hf: no Hugging Face model for layer_pattern={m.layer_pattern!r} (dense or moe)")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = model.to(device)
    embeds = [torch.randn(sessions, z - a, m.d_model, device=device) for a, z in segs]
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times = []
    with torch.inference_mode():
        cache = None
        if turn:
            prefix = torch.randn(sessions, turn * P, m.d_model, device=device)
            cache = model(inputs_embeds=prefix, use_cache=True).past_key_values
        for _ in range(ticks + 1):  # the first micro-turn warms up
            sync()
            t0 = time.perf_counter()
            for x in embeds:
                cache = model(inputs_embeds=x, past_key_values=cache, use_cache=True).past_key_values
            sync()  # CUDA calls return before the work is done
            times.append(time.perf_counter() - t0)
    times = times[1:]
    med = float(np.median(times))
    return dict(bench="hf_transformers", config=config_name, sessions=sessions, length_s=seconds,
                median_ms=med * 1e3, p99_ms=float(np.percentile(times, 99)) * 1e3, rtf=med / layout.micro_turn_s,
                torch=torch.__version__, transformers=transformers.__version__,
                threads=torch.get_num_threads(), torch_device=str(device))


def _hf_available() -> bool:
    import importlib.util

    return all(importlib.util.find_spec(n) is not None for n in ("torch", "transformers"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", default="tiny,small,small_moe")
    ap.add_argument("--sessions", default="1,4,16")
    ap.add_argument("--lengths", default="10,60,300", help="session lengths in seconds")
    ap.add_argument("--ticks", type=int, default=20)
    ap.add_argument("--naive", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--json", default=os.path.join(REPO, "experiments/perf/results/streaming.json"))
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="config override for every engine, e.g. --set inference.decode_attention=pallas")
    ap.add_argument("--hf", action=argparse.BooleanOptionalAction, default=None,
                    help="Hugging Face transformers row (default: when torch and transformers are installed)")
    args = ap.parse_args()
    EXTRA_OVERRIDES[:] = args.set
    hf = _hf_available() if args.hf is None else args.hf
    import jax

    rows = []
    lengths = [float(x) for x in args.lengths.split(",")]
    for cfg in args.configs.split(","):
        for n in (int(x) for x in args.sessions.split(",")):
            for secs in lengths:
                rows.append(bench_engine(cfg, n, secs, args.ticks))
                print(json.dumps(rows[-1]), flush=True)
                if hf:
                    try:
                        rows.append(bench_hf(cfg, n, secs, args.ticks))
                        rows[-1]["engine_speedup"] = rows[-1]["median_ms"] / rows[-2]["median_ms"]
                    except Exception as e:  # optional row: report and keep the others
                        rows.append(dict(bench="hf_transformers", config=cfg, sessions=n, length_s=secs,
                                         error=f"{type(e).__name__}: {e}"))
                    print(json.dumps(rows[-1]), flush=True)
            if args.naive:
                rows.append(bench_naive(cfg, n, lengths[0], args.ticks))
                eng = next(r for r in rows if r["bench"] == "engine" and r["config"] == cfg and r["sessions"] == n
                           and r["length_s"] == lengths[0])
                rows[-1]["engine_speedup"] = rows[-1]["median_ms"] / eng["median_ms"]
                print(json.dumps(rows[-1]), flush=True)
    print(f"\n{'bench':13} {'config':10} {'sess':>4} {'len s':>6} {'median ms':>10} {'p99 ms':>8} {'RTF':>6}  note")
    for r in rows:
        if "error" in r:
            print(f"{r['bench']:13} {r['config']:10} {r['sessions']:>4} {r['length_s']:>6.0f}  failed: {r['error']}")
            continue
        note = f"engine x{r['engine_speedup']:.1f} faster" if "engine_speedup" in r else \
            f"KV {r.get('kv_mb_per_session', 0):.1f} MiB/session"
        print(f"{r['bench']:13} {r['config']:10} {r['sessions']:>4} {r['length_s']:>6.0f} {r['median_ms']:>10.1f} "
              f"{r['p99_ms']:>8.1f} {r['rtf']:>6.2f}  {note}")
    from interaction_jax.results_io import write_record

    write_record(args.json, {"device": str(jax.devices()[0].device_kind), "cpu_count": os.cpu_count(),
                             "overrides": args.set, "rows": rows})


if __name__ == "__main__":
    main()
