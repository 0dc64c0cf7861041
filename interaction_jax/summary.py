"""Parameter table of a config's model, by module, without materialising any weight.

    python -m interaction_jax.summary --config=configs/tiny.py [--config.model.num_layers=8]
    python -m interaction_jax.summary --config=configs/tml_interaction_small.py --serving_mesh=tensor=4,expert=16

The model is built under `nnx.eval_shape`, so even the paper-scale config (276B parameters)
is summarised in seconds on a laptop. The last line is machine-readable:

    total_params=<int> active_params=<int>

Convention for *active* parameters (those used to process one token): every parameter counts
fully — embeddings (text, dMel, kind, hMLP), attention, norms, dense FFNs, routers, shared
experts, text and flow heads — except routed expert weights (logical axes with "expert" as the
first non-"layers" axis), which count top_k / num_experts of their size. Embedding tables are
included (a looked-up row is "used"; the tables are small next to the backbone here).
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
from flax import nnx

from interaction_jax.model.interaction_model import InteractionModel


def _is_routed_expert(names) -> bool:
    axes = [n for n in (names or ()) if n != "layers"]
    return bool(axes) and axes[0] == "expert"


def _label(path, depth: int) -> str:
    """Module label: `depth` named levels; list indices dropped except a block's pattern slot."""
    out, named = [], 0
    for i, part in enumerate(str(p) for p in path[:-1]):
        if part.isdigit():
            if i and str(path[i - 1]) == "blocks":
                out.append(part)
            continue
        out.append(part)
        if part not in ("groups", "blocks"):
            named += 1
        if named == depth:
            break
    return "/".join(out)


def abstract_model(config) -> InteractionModel:
    """The model with ShapeDtypeStruct leaves (nothing allocated)."""
    return nnx.eval_shape(lambda: InteractionModel(config, rngs=nnx.Rngs(0)))


def param_rows(config, depth: int = 2) -> list[tuple[str, int, int]]:
    """(module path truncated to `depth`, total params, active params) per module, sorted by path."""
    model = abstract_model(config)
    ratio = int(config.model.moe.top_k) / int(config.model.moe.num_experts)
    total: dict[str, int] = defaultdict(int)
    active: dict[str, float] = defaultdict(float)
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        key = _label(path, depth)
        n = int(np.prod(var.get_value().shape))
        total[key] += n
        active[key] += n * ratio if _is_routed_expert(var.get_metadata().get("out_sharding")) else n
    return [(k, total[k], int(round(active[k]))) for k in sorted(total)]


def count_params(config) -> tuple[int, int]:
    """(total, active) parameter counts; see the module docstring for the convention."""
    rows = param_rows(config)
    return sum(r[1] for r in rows), sum(r[2] for r in rows)


def format_table(rows: list[tuple[str, int, int]]) -> str:
    width = max([len(r[0]) for r in rows] + [6])
    lines = [f"{'module':<{width}}  {'params':>16}  {'active':>16}"]
    lines += [f"{name:<{width}}  {tot:>16,}  {act:>16,}" for name, tot, act in rows]
    tot, act = sum(r[1] for r in rows), sum(r[2] for r in rows)
    lines.append(f"{'total':<{width}}  {tot:>16,}  {act:>16,}")
    lines.append(f"total_params={tot} active_params={act}")
    return "\n".join(lines)


def _define_flags() -> None:
    from absl import flags

    from interaction_jax import cli

    cli.DEFINE_config("config", "Config file (get_config), e.g. configs/tiny.py.")
    flags.DEFINE_string("serving_mesh", None, "Also print the streaming engine's memory plan on this serving "
                        "mesh, e.g. tensor=4,expert=16 (inference/sharding.py; axes data, fsdp, expert, tensor).")


def format_plan(plan: dict) -> str:
    """The serving memory plan in GiB, then one machine-readable line of the byte counts."""
    gib = lambda b: f"{b / 2**30:,.3f} GiB"  # noqa: E731
    mesh = " x ".join(f"{a}={n}" for a, n in plan["mesh"].items() if n > 1) or "one device"
    lines = [
        f"serving mesh {mesh} ({plan['devices']} devices)",
        f"  parameters per device           {gib(plan['param_bytes_per_device'])}"
        f" (of {gib(plan['param_bytes_total'])})",
        f"  KV cache per session-minute     {gib(plan['kv_bytes_per_session_minute_per_device'])} per device",
        f"  KV cache per session ({plan['context_policy']}, {plan['cache_rows_per_session']} rows)"
        f"  {gib(plan['kv_bytes_per_session_per_device'])} per device",
    ]
    for axis in plan.get("idle_axes", []):
        lines.append(f"  note: {axis}={plan['mesh'][axis]} shards no parameter (it divides none of the dimensions "
                     f"the rules map to it): every device holds what one device would")
    keys = ("param_bytes_per_device", "param_bytes_total", "kv_bytes_per_session_minute_per_device",
            "kv_bytes_per_session_per_device")
    lines.append(" ".join(f"{k}={plan[k]}" for k in keys))
    return "\n".join(lines)


def main(argv) -> None:
    """Prints the parameter table of `--config`'s model (and, with --serving_mesh, its serving memory plan)."""
    from absl import app, flags

    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}: summary takes only flags")
    if flags.FLAGS.config is None:
        raise app.UsageError("--config=FILE is required (e.g. --config=configs/tiny.py)")
    print(format_table(param_rows(flags.FLAGS.config)))
    if flags.FLAGS.serving_mesh is not None:
        from interaction_jax.inference.sharding import parse_mesh_flag, serving_plan

        print(format_plan(serving_plan(flags.FLAGS.config, parse_mesh_flag(flags.FLAGS.serving_mesh))))


if __name__ == "__main__":
    from interaction_jax.cli import run as run_cli

    run_cli(main, name="summary", define_flags=_define_flags)
