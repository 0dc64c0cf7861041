"""Run in a subprocess with 8 forced CPU devices (test_engine_mesh.py): the engine on a serving mesh
against the one-device engine, for each (name, config overrides, mesh) case; prints one RESULT line.

Per case: slot 1 is teacher-forced through a short episode on both engines. On the one-device
engine it is the only session; on the sharded one other sessions join (reset) and leave (idle)
around it and free-run, so slot 1 equal to the reference shows both the placement and the slot
independence. Then the sharded engine runs on to `COMPILE_TICKS` micro-turns in all (sessions
free-running, one leaving and a new one joining on the way) and the compile count is read.
"""

import json
import os
import re
import sys
import warnings

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]

import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402
from helpers import episode, forced_inputs, grid_and_window  # noqa: E402

from interaction_jax.config_lib import load_config  # noqa: E402
from interaction_jax.inference.engine import StreamEngine  # noqa: E402
from interaction_jax.model.interaction_model import InteractionModel  # noqa: E402

TINY = os.path.join(os.path.dirname(HERE), "..", "configs", "tiny.py")
CASES = {
    "dense_tp2_dp4": ([], {"tensor": 2, "data": 4}),
    "moe_ep4_dp2": (["model.layer_pattern=dense,moe", "inference.layer_loop=scan"], {"expert": 4, "data": 2}),
    # 8 heads / kv-heads of width 8: every tensor-sharded dimension divisible by 8
    "dense_tp8": (["model.num_heads=8", "model.num_kv_heads=8", "model.head_dim=8", "inference.layer_loop=scan"],
                  {"tensor": 8}),
}
SLOT, TICKS, COMPILE_TICKS = 1, 12, 50


def replay(engine, grid, others: bool) -> list[dict]:
    engine.reset(SLOT, seed=7)
    outs = []
    for t in range(TICKS):
        inputs = engine.empty_inputs()
        if t < grid.num_turns:
            forced_inputs(engine, grid, t, SLOT, inputs)
        if others:
            if t == 1:
                engine.reset(0, seed=11)  # joins
            if t == 2:
                engine.reset(3, seed=13)
            for o, (start, stop) in {0: (1, 4), 3: (2, TICKS)}.items():
                if start <= t < stop:  # 0 leaves after tick 3
                    inputs["dmel"][o] = np.random.RandomState(t + o).randint(0, 16, inputs["dmel"][o].shape)
                    inputs["active"][o] = True
        outs.append(engine.step(inputs))
    return outs[: grid.num_turns]


def run_on(engine, n: int) -> int:
    """`n` more micro-turns with free-running sessions (slot 2 joins halfway, slot 3 leaves); returns n."""
    rs = np.random.RandomState(5)
    for t in range(n):
        if t == n // 2:
            engine.reset(2, seed=17)
        inputs = engine.empty_inputs()
        inputs["active"][:] = [True, True, t >= n // 2, t < n // 2]
        inputs["dmel"][:] = rs.randint(0, 16, inputs["dmel"].shape)
        engine.step(inputs)
    return n


def cache_collectives(engine) -> tuple[int, int]:
    """(collectives in the compiled step, those whose result has the cache's row dimension): a
    read of the KV cache must stay on each device's own slots and kv-heads, never gathered."""
    inputs = engine.empty_inputs()
    text = engine._step.lower(engine.params, engine.state, inputs).compile().as_text()
    ops = ("all-gather", "all-to-all", "collective-permute", "all-reduce", "reduce-scatter")
    lines = [ln for ln in text.splitlines() if any(f" {op}(" in ln or f" {op}-start(" in ln for op in ops)]
    rows = engine.state.k.shape[2]
    shapes = [re.findall(r"\[([0-9,]*)\]", ln.split("=", 1)[1].split("(", 1)[0]) for ln in lines]
    with_rows = [s for s in shapes if any(str(rows) in dims.split(",") for dims in s)]
    return len(lines), len(with_rows)


def spec_of(x) -> str:
    return str(tuple(x.sharding.spec))


def configs(overrides, shape):
    base = overrides + ["inference.slots=4", "inference.temperature=0", "train.async_checkpointing=False"]
    return load_config(TINY, base), load_config(TINY, base + [f"inference.mesh.{a}={n}" for a, n in shape.items()])


def run_case(overrides, shape, engines: dict | None = None) -> dict:
    c0, c1 = configs(overrides, shape)
    model = InteractionModel(c0, rngs=nnx.Rngs(0))
    _, grid, _ = grid_and_window(c0, episode(1.0))
    ref_engine = StreamEngine(c0, model, debug_outputs=True)
    ref = replay(ref_engine, grid, others=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        engine = StreamEngine(c1, model, debug_outputs=True)
    got = replay(engine, grid, others=True)
    ticks = TICKS + run_on(engine, COMPILE_TICKS - TICKS)
    diff = lambda k: float(max(np.abs(a[k][SLOT] - b[k][SLOT]).max() for a, b in zip(ref, got)))  # noqa: E731
    # unrolled: the first group's own params; scan: the stacked groups inside the model
    block0 = engine.params.groups[0][0] if engine.params.groups else engine.params.outer[0]["backbone"]["groups"]
    attn = block0["blocks"][0]["attn"]
    out = {
        "turns": grid.num_turns,
        "logits": diff("text_logits"),
        "hidden": diff("audio_hidden"),
        "mel": diff("mel"),
        "compilations": engine.compilations(),
        "ticks": ticks,
        "collectives": cache_collectives(engine),
        "devices": len(engine.state.k.sharding.device_set),
        "cache_spec": spec_of(engine.state.k),
        "wq_spec": spec_of(attn["wq"][...]),
        "warnings": [str(w.message)[:200] for w in caught],
    }
    if "moe" in " ".join(overrides):
        out["w_gate_spec"] = spec_of(block0["blocks"][1]["ffn"]["w_gate"][...])
    # the memory plan (eval_shape, no devices) against the bytes the engine placed on device 0
    from interaction_jax.inference.sharding import serving_plan

    dev0 = jax.devices()[0]
    on_dev0 = lambda tree: sum(s.data.nbytes for x in jax.tree.leaves(tree)  # noqa: E731
                               for s in x.addressable_shards if s.device == dev0)
    slots_on_dev0 = next(s.data.shape[1] for s in engine.state.k.addressable_shards if s.device == dev0)
    plan = serving_plan(c1, shape)
    out["plan"] = [plan["param_bytes_per_device"], plan["kv_bytes_per_session_per_device"]]
    out["placed"] = [on_dev0(engine.params), on_dev0((engine.state.k, engine.state.v)) // slots_on_dev0]
    if engines is not None:
        engines.update(ref=ref_engine, mesh=engine, grid=grid)
    return out


def restore_check(overrides, shape, engines: dict, workdir: str) -> dict:
    """A checkpoint saved by training on fsdp=8, restored onto the serving mesh and served."""
    from interaction_jax.inference.params import load_params
    from interaction_jax.parallel import make_mesh
    from interaction_jax.train import checkpoint as ckpt
    from interaction_jax.train.state import create_train_state

    c0, c1 = configs(overrides, shape)
    _, state = create_train_state(c0, make_mesh({"fsdp": 8}), seed=3)
    manager = ckpt.make_manager(os.path.join(workdir, "checkpoints"), c0.train)
    ckpt.save(manager, 5, state, force=True)
    manager.wait_until_finished()
    saved = jax.device_get(state["params"])
    params, rest = load_params(c1, workdir)
    leaves = jax.tree.leaves(params)
    wq = params["backbone"]["groups"]["blocks"][0]["attn"]["wq"][...]
    ref, engine, grid = engines["ref"], engines["mesh"], engines["grid"]
    engine.load_params(params, rest)
    ref.load_params(*jax.device_put(jax.device_get((params, rest)), jax.devices()[0]))
    logits = []
    for e in (ref, engine):
        e.reset(SLOT, seed=7)
        logits.append([e.step(forced_inputs(e, grid, t, SLOT))["text_logits"][SLOT] for t in range(2)])
    return {
        "identical": all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(saved),
                                                              jax.tree.leaves(jax.device_get(params)))),
        "on_serving_mesh": all(x.sharding.mesh.shape == engine.mesh.shape for x in leaves),
        "wq_spec": spec_of(wq),
        "wq_shard_vs_global": [list(wq.addressable_shards[0].data.shape), list(wq.shape)],
        "logits": float(np.abs(np.asarray(logits[0]) - np.asarray(logits[1])).max()),
        "logits_scale": float(np.abs(np.asarray(logits[0])).max()),
        "compilations": engine.compilations(),
    }


def strategies_check() -> dict:
    """Each cache-attention strategy run per device (`sharded_strategy`, tensor=2 x data=4) against
    itself on one device: max |difference| per strategy name (the Pallas kernel in interpret mode)."""
    import jax.numpy as jnp

    from interaction_jax.inference.sharding import sharded_strategy
    from interaction_jax.model.kv_cache import LinearRows, cache_attention_fn, linear_view
    from interaction_jax.parallel import make_mesh

    mesh = make_mesh({"tensor": 2, "data": 4})
    b, s, h, kvh, hd, t = 4, 3, 4, 2, 8, 24
    keys = jax.random.split(jax.random.key(0), 3)
    q = jax.random.normal(keys[0], (b, s, h, hd))
    k, v = (jax.random.normal(x, (2, b, t, kvh, hd)) for x in keys[1:])
    view = linear_view(jnp.array([0, 5, 17, 9], jnp.int32), s, t)
    rows = LinearRows(window=8, sinks=2)
    out = {}
    for name in ("dense", "live_window", "pallas_interpret"):
        base, fn = cache_attention_fn(name), cache_attention_fn(sharded_strategy(name, mesh))
        want = jax.jit(lambda q, k, v, f=base: f(q, k, v, 1, view, rows, "xla"))(q, k, v)
        got = jax.jit(lambda q, k, v, f=fn: f(q, k, v, 1, view, rows, "xla"))(q, k, v)
        out[name] = float(jnp.max(jnp.abs(want - got)))
    return out


def main(names, workdir: str | None) -> None:
    assert jax.device_count() == 8, jax.devices()
    result, engines = {"strategies": strategies_check()}, {}
    for name in names:
        result[name] = run_case(*CASES[name], engines=engines if name == "dense_tp2_dp4" else None)
        print(f"CASE {name} " + json.dumps(result[name]), flush=True)
    if workdir and "ref" in engines:
        result["restore"] = restore_check(*CASES["dense_tp2_dp4"], engines, workdir)
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    args = sys.argv[1:]
    workdir = args.pop(0)[len("--workdir="):] if args and args[0].startswith("--workdir=") else None
    main(args or list(CASES), workdir)
