"""What a serving mesh costs the engine's step: the sharded step against the one-device step, same run.

    python experiments/perf/engine_mesh.py [--config=tiny] [--slots=8] [--seconds=10] [--ticks=20] \
        [--meshes=data=8,tensor=2+data=4,tensor=8] [--out=experiments/perf/results/engine_mesh_cpu.json]

Re-executes itself with `--xla_force_host_platform_device_count=8` (faked CPU devices, as the mesh
tests use) unless the flag is already set. In that one process it builds the one-device engine
and one engine per `--meshes` entry (`inference.mesh.<axis>=<n>`, axes joined by `+`), all with
`--slots` sessions `--seconds` into a session, and times `--ticks` micro-turns of each after a
compile call and `WARMUP` untimed ticks, the engines interleaved tick by tick so that a slow
moment of the machine hits every row alike. Per row it reports the step median / p90, its ratio to the one-device median
of the same run, and the collectives in the compiled step (count per kind, from the HLO).

On faked CPU devices every "device" shares the same cores, so the ratio is the price of the
partitioned program (collectives, per-device launch, smaller matmuls), not a speed-up: it is
the overhead a real multi-device mesh has to win back with more hardware. Timings are never
asserted in tests; run on a quiet machine.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEVICES = 8
WARMUP = 3  # untimed ticks per engine after its compile call
COLLECTIVES = ("all-gather", "all-to-all", "collective-permute", "all-reduce", "reduce-scatter")


class MeshSpecError(ValueError):
    """A --meshes entry that is not axis=n[+axis=n...] over the mesh axes."""


def parse_mesh(text: str) -> dict[str, int]:
    """`"tensor=2+data=4"` -> {"tensor": 2, "data": 4}; one clear error for anything else."""
    axes = ("data", "fsdp", "expert", "tensor")
    out: dict[str, int] = {}
    for part in text.split("+"):
        name, _, n = part.partition("=")
        if name not in axes or not n.isdigit() or int(n) < 1:
            raise MeshSpecError(f"--meshes: {text!r} is not axis=n[+axis=n...] with axes from {axes}")
        out[name] = int(n)
    total = 1
    for n in out.values():
        total *= n
    if total != DEVICES:
        raise MeshSpecError(f"--meshes: {text!r} uses {total} devices; this benchmark fakes {DEVICES}")
    return out


def collectives(engine) -> dict[str, int]:
    """Collective ops of the compiled step, by kind (start ops of async pairs counted once)."""
    text = engine._step.lower(engine.params, engine.state, engine.empty_inputs()).compile().as_text()
    counts = {op: len(re.findall(rf" {op}(?:-start)?\(", text)) for op in COLLECTIVES}
    return {op: n for op, n in counts.items() if n}


def _engine(config: str, slots: int, seconds: float, mesh: dict[str, int] | None):
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from interaction_jax.config_lib import load_config
    from interaction_jax.inference.engine import StreamEngine
    from interaction_jax.model.interaction_model import InteractionModel

    overrides = ["inference.context_policy=hard", f"inference.max_session_seconds={seconds}",
                 f"inference.slots={slots}"] + [f"inference.mesh.{a}={n}" for a, n in (mesh or {}).items()]
    c = load_config(os.path.join(REPO, "configs", f"{config}.py"), overrides)
    engine = StreamEngine(c, InteractionModel(c, rngs=nnx.Rngs(0)))
    for s in range(slots):
        engine.reset(s, seed=s)
    turn = max(int(round(seconds / engine.layout.micro_turn_s)) - 1, 0)
    engine.state = engine.state._replace(
        length=jnp.full((slots,), turn * engine.layout.positions_per_turn, jnp.int32),
        turn=jnp.full((slots,), turn, jnp.int32))
    inputs = engine.empty_inputs()
    inputs["active"][:] = True
    inputs["dmel"][:] = np.random.RandomState(0).randint(0, 16, inputs["dmel"].shape)
    return engine, inputs


def run(config: str, slots: int, seconds: float, ticks: int, meshes: list[str]) -> dict:
    """The rows (one-device first), timed interleaved in this process."""
    import jax
    import numpy as np

    if jax.device_count() < DEVICES:
        raise RuntimeError(f"needs {DEVICES} devices, has {jax.device_count()} (XLA_FLAGS not applied?)")
    names = ["one device"] + meshes
    shapes = [None] + [parse_mesh(m) for m in meshes]
    engines = []
    for name, shape in zip(names, shapes, strict=True):
        engine, inputs = _engine(config, slots, seconds, shape)
        t0 = time.perf_counter()
        engine.step(inputs)
        print(f"[engine_mesh] {name}: compiled in {time.perf_counter() - t0:.1f} s", flush=True)
        engines.append((engine, inputs))
    for _ in range(WARMUP):  # the first ticks after a compile start the per-device thread pools
        for engine, inputs in engines:
            engine.step(inputs)
    times: list[list[float]] = [[] for _ in engines]
    for _ in range(ticks):
        for i, (engine, inputs) in enumerate(engines):
            t0 = time.perf_counter()
            engine.step(inputs)
            times[i].append(time.perf_counter() - t0)
    base = float(np.median(times[0]))
    rows = []
    for name, shape, (engine, _), ts in zip(names, shapes, engines, times, strict=True):
        med = float(np.median(ts))
        rows.append(dict(mesh=name, axes=shape or {}, step_ms_median=1e3 * med,
                         step_ms_p90=1e3 * float(np.percentile(ts, 90)), x_one_device=med / base,
                         collectives=collectives(engine) if shape else {}))
    return dict(config=config, slots=slots, session_s=seconds, ticks=ticks, devices=DEVICES,
                jax=jax.__version__, rows=rows)


def table(result: dict) -> str:
    lines = ["| mesh | step median (ms) | p90 (ms) | x one device | collectives in the step |",
             "| --- | --- | --- | --- | --- |"]
    for r in result["rows"]:
        coll = ", ".join(f"{k} {v}" for k, v in r["collectives"].items()) or "-"
        lines.append(f"| {r['mesh']} | {r['step_ms_median']:.1f} | {r['step_ms_p90']:.1f} | "
                     f"{r['x_one_device']:.2f} | {coll} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="tiny", help="configs/<name>.py")
    ap.add_argument("--slots", type=int, default=8, help="sessions (a multiple of every mesh's data axis)")
    ap.add_argument("--seconds", type=float, default=10.0, help="how far into a session the ticks are")
    ap.add_argument("--ticks", type=int, default=20, help="timed micro-turns per row")
    ap.add_argument("--meshes", default="data=8,tensor=2+data=4,tensor=8", help="comma-separated axis=n[+axis=n]")
    ap.add_argument("--out", default=os.path.join(REPO, "experiments/perf/results/engine_mesh_cpu.json"))
    args = ap.parse_args(argv)
    meshes = [m for m in args.meshes.split(",") if m]
    try:
        for m in meshes:
            shape = parse_mesh(m)
            slot_shards = shape.get("data", 1) * shape.get("fsdp", 1)
            if args.slots % slot_shards:
                raise MeshSpecError(f"--slots={args.slots} does not split over {m!r} ({slot_shards} slot shards)")
        if args.slots < 1 or args.ticks < 1 or args.seconds <= 0:
            raise MeshSpecError("--slots and --ticks must be >= 1 and --seconds > 0")
    except MeshSpecError as e:
        print(f"engine_mesh: {e}", file=sys.stderr)
        return 2
    flag = f"--xla_force_host_platform_device_count={DEVICES}"
    if flag not in os.environ.get("XLA_FLAGS", ""):  # JAX reads the flag at start: run again with it
        env = dict(os.environ, XLA_FLAGS=(os.environ.get("XLA_FLAGS", "") + " " + flag).strip(),
                   JAX_PLATFORMS="cpu")
        return subprocess.run([sys.executable, os.path.abspath(__file__), *(argv or sys.argv[1:])], env=env).returncode
    sys.path.insert(0, REPO)
    result = run(args.config, args.slots, args.seconds, args.ticks, meshes)
    from interaction_jax.results_io import write_record

    result["command"] = "python experiments/perf/engine_mesh.py " + " ".join(argv or sys.argv[1:])
    print(table(result))
    write_record(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
