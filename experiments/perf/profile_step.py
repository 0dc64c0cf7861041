"""Where a micro-turn's time goes: the engine's step under `jax.profiler`, by model part and op kind.

    python experiments/perf/profile_step.py --config=small --sessions=1 --seconds=10 \
        --json=experiments/perf/results/profile_step_small_cpu.json

The floor of a micro-turn (`decode_floor.py`) says how far the step is from what the machine can
do; this says where the rest goes. One engine (`streaming.py`'s, random weights) at the end of a
`--seconds` session runs `--ticks` micro-turns under the profiler (a perfetto trace); every XLA
op the trace names (`hlo_op`) is looked up in the step's compiled module, and its **self time**
(its duration minus the ops nested in it on the same thread: a `while` keeps only its loop
overhead) is summed

* by **part**: the named scopes the model and the engine put on their ops (`embed`, `attn` with
  its `kv_write` and `cache_read`, `ffn`, `text_head`, `sample_text`, `flow_sample`,
  `dmel_encode`; `other` for the rest), and
* by **model call** (the engine's `model_call_a_z` scopes: positions [a, z) of the micro-turn;
  "outside" for sampling, the flow head and dMel encoding), and
* by **op kind**: the op's name without its number (`dot`, `ynn_fusion` (XNNPACK's fused
  matmuls), `copy_bitcast_fusion`, `while`, ...), with the parts it ran in.

Per micro-turn: each sum divided by the traced ticks; the untraced step's median (`--iters`
calls) beside it, so the profiler's own overhead shows. A CPU with several threads can run ops side by
side, so self times may sum to more than the wall time. Timings are never asserted in tests.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

PARTS = ("kv_write", "cache_read", "attn", "ffn", "embed", "text_head", "sample_text", "flow_sample",
         "dmel_encode")  # most specific first: an op in attn/cache_read is "cache_read"
_INSTR = re.compile(r"^\s*(?:ROOT )?%([\w.-]+) = ")
_OPERANDS = re.compile(r" = \S+ [\w-]+\(([^)]*)\)")
_OP_NAME = re.compile(r'op_name="([^"]*)"')


def part_of(op_name: str) -> str:
    """The most specific named scope in an op's `op_name` metadata ("other" for none)."""
    scopes = set(op_name.split("/"))
    return next((p for p in PARTS if p in scopes), "other")


def call_of(op_name: str) -> str:
    """The engine's model call an op ran in ("positions a-z" of the micro-turn), or "outside"."""
    m = re.search(r"model_call_(\d+)_(\d+)", op_name)
    return f"positions {m.group(1)}-{int(m.group(2)) - 1}" if m else "outside"


def op_parts(hlo_text: str) -> dict[str, tuple[str, str]]:
    """{instruction name: (part, call)} for every instruction of a compiled module's text.

    An op's own `op_name` metadata when it has one; a fusion compiled without any (XNNPACK's
    matmul fusions, whose computations keep no metadata) takes those of its operands, which
    carry the scope of the values it multiplies.
    """
    own, operands = {}, {}
    for line in hlo_text.splitlines():
        m = _INSTR.match(line)
        if not m:
            continue
        name = m.group(1)
        op_name = _OP_NAME.search(line)
        if op_name:
            own[name] = (part_of(op_name.group(1)), call_of(op_name.group(1)))
        args = _OPERANDS.search(line)
        operands[name] = re.findall(r"%([\w.-]+)", args.group(1)) if args else []
    unknown = ("other", "outside")

    def resolve(name: str, depth: int = 0) -> tuple[str, str]:
        if name in own or depth > 8:
            return own.get(name, unknown)
        found = [resolve(o, depth + 1) for o in operands.get(name, [])]
        best = next((f for f in found if f[0] != "other"), found[0] if found else unknown)
        own[name] = best
        return best

    return {name: resolve(name) for name in operands}


def self_times(events: list[dict]) -> list[tuple[str, float]]:
    """[(hlo_op, self µs)] of the trace's XLA op events: duration minus the nested ops' on one thread."""
    by_thread = collections.defaultdict(list)
    for e in events:
        if e.get("ph") == "X" and "hlo_op" in e.get("args", {}):
            by_thread[(e["pid"], e["tid"])].append(e)
    out = []
    for evs in by_thread.values():
        evs.sort(key=lambda e: (e["ts"], -e["dur"]))
        stack: list[list] = []  # [end, name, self]
        for e in evs:
            while stack and e["ts"] >= stack[-1][0] - 1e-3:
                _, name, own = stack.pop()
                out.append((name, own))
            if stack:
                stack[-1][2] -= e["dur"]
            stack.append([e["ts"] + e["dur"], e["args"]["hlo_op"], e["dur"]])
        out += [(name, own) for _, name, own in stack]
    return out


def kind_of(op: str) -> str:
    return re.sub(r"\.\d+(\.clone)?$", "", op)


def profile(config_name: str, sessions: int, seconds: float, ticks: int, iters: int) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np
    import streaming

    _, _, engine = streaming._engine(config_name, sessions, seconds)
    for s in range(sessions):
        engine.reset(s, seed=s)
    turn = streaming.start_turn(seconds, ticks + iters, engine.layout.micro_turn_s)
    engine.state = engine.state._replace(
        length=jnp.full((sessions,), turn * engine.layout.positions_per_turn, jnp.int32),
        turn=jnp.full((sessions,), turn, jnp.int32))
    inputs = engine.empty_inputs()
    inputs["active"][:] = True
    # the executable that runs is the one whose text names the ops: compiled once, called as
    # `StreamEngine.step` calls its jitted step (state donated, outputs to host numpy)
    compiled = engine._step.lower(engine.params, engine.state, inputs).compile()
    hlo = compiled.as_text()

    def step() -> None:
        engine.state, out = compiled(engine.params, engine.state, inputs)
        jax.tree.map(np.asarray, out)

    step()
    untraced = []
    for _ in range(iters):
        t0 = time.perf_counter()
        step()
        untraced.append(time.perf_counter() - t0)
    with tempfile.TemporaryDirectory() as d:
        jax.profiler.start_trace(d, create_perfetto_trace=True)
        for _ in range(ticks):
            step()
        jax.profiler.stop_trace()
        (trace,) = glob.glob(os.path.join(d, "**", "*.trace.json.gz"), recursive=True)
        with gzip.open(trace) as f:
            events = json.load(f)["traceEvents"]
    parts_of = op_parts(hlo)
    by_part, by_call = collections.Counter(), collections.Counter()
    by_kind = collections.defaultdict(collections.Counter)
    unnamed = 0.0  # self time of ops the module's text does not name (expected: none)
    for op, us in self_times(events):
        unnamed += 0.0 if op in parts_of else us / ticks / 1e3
        part, call = parts_of.get(op, ("other", "outside"))
        by_part[part] += us / ticks / 1e3
        by_call[call] += us / ticks / 1e3
        by_kind[kind_of(op)][part] += us / ticks / 1e3
    kinds = sorted(by_kind.items(), key=lambda kv: -sum(kv[1].values()))
    return dict(config=config_name, sessions=sessions, length_s=seconds, ticks=ticks,
                untraced_step_ms=float(np.median(untraced)) * 1e3,
                self_ms_total=sum(by_part.values()), unnamed_ms=unnamed,
                by_part={p: by_part[p] for p in (*PARTS, "other") if by_part[p] > 0},
                by_call=dict(sorted(by_call.items(), key=lambda kv: (kv[0] == "outside", kv[0]))),
                by_kind=[dict(kind=k, ms=sum(c.values()), parts=dict(c.most_common())) for k, c in kinds])


def table(r: dict, top: int = 12) -> str:
    total = r["self_ms_total"]
    lines = [f"{r['config']}, {r['sessions']} session(s) at {r['length_s']:g} s: step {r['untraced_step_ms']:.1f} ms "
             f"untraced; op self time {total:.1f} ms per micro-turn (traced)", "",
             f"{'part':<14} {'ms':>8} {'share':>6}"]
    lines += [f"{p:<14} {ms:>8.2f} {ms / total:>6.1%}" for p, ms in sorted(r["by_part"].items(), key=lambda x: -x[1])]
    lines += ["", f"{'model call':<14} {'ms':>8} {'share':>6}"]
    lines += [f"{c:<14} {ms:>8.2f} {ms / total:>6.1%}" for c, ms in r["by_call"].items()]
    lines += ["", f"{'op kind':<30} {'ms':>8}  parts"]
    for k in r["by_kind"][:top]:
        parts = ", ".join(f"{p} {ms:.1f}" for p, ms in list(k["parts"].items())[:3])
        lines.append(f"{k['kind']:<30} {k['ms']:>8.2f}  {parts}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="small", help="a config name in configs/ (tiny, small, small_moe, ...)")
    ap.add_argument("--sessions", type=int, default=1)
    ap.add_argument("--seconds", type=float, default=10.0, help="session length the cache holds at the traced ticks")
    ap.add_argument("--ticks", type=int, default=5, help="micro-turns traced")
    ap.add_argument("--iters", type=int, default=9, help="untraced micro-turns timed before the trace")
    ap.add_argument("--json", default="", help="write the result here (default: print only)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="config override, e.g. --set inference.decode_attention=live_flat")
    args = ap.parse_args()
    if min(args.sessions, args.ticks, args.iters) < 1 or args.seconds <= 0:
        ap.error("--sessions, --ticks and --iters must be >= 1 and --seconds > 0")
    if not os.path.exists(os.path.join(REPO, "configs", f"{args.config}.py")):
        ap.error(f"--config={args.config}: no configs/{args.config}.py (expected a name such as tiny or small)")
    import jax
    import streaming

    streaming.EXTRA_OVERRIDES[:] = args.set
    r = profile(args.config, args.sessions, args.seconds, args.ticks, args.iters)
    r["overrides"] = list(args.set)
    print(table(r))
    if args.json:
        r.update(device=str(jax.devices()[0]), jax=jax.__version__)
        from interaction_jax.results_io import write_record

        write_record(args.json, r)


if __name__ == "__main__":
    main()
