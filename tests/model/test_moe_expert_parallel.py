"""Expert parallelism on an 8-device CPU mesh equals the single-device dropless layer.

The check runs this file as a script in a subprocess with
`--xla_force_host_platform_device_count=8` set before JAX starts, so the rest of the suite keeps
its single CPU device.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _check() -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from interaction_jax.config_lib import base_config
    from interaction_jax.model.moe import MoEFeedForward
    from interaction_jax.parallel import make_mesh, shard_params

    assert jax.device_count() == 8, jax.devices()
    c = base_config().model.moe
    c.num_experts, c.top_k, c.expert_ffn_dim, c.shared_expert = 8, 2, 8, True
    d = 8
    x = jax.random.normal(jax.random.key(1), (4, 6, d))  # 24 tokens, 3 per device

    def run(layer):
        def loss(m):
            y, aux = m(x)
            return jnp.sum(y**2) + aux["aux_loss"], (y, aux)

        (_, (y, aux)), g = nnx.value_and_grad(loss, has_aux=True)(layer)
        return y, aux, nnx.state(g, nnx.Param)

    def diff(a, b):
        return float(max(jax.tree.leaves(jax.tree.map(lambda u, v: jnp.max(jnp.abs(u - v)), a, b))))

    single = MoEFeedForward(d, c, rngs=nnx.Rngs(0))
    y0, aux0, g0 = nnx.jit(run)(single)
    out = {}
    for name, shape in {
        "data2_expert4": {"data": 2, "expert": 4},
        "ep2_tp2": {"fsdp": 2, "expert": 2, "tensor": 2},
    }.items():
        mesh = make_mesh(shape)
        layer = MoEFeedForward(d, c, mesh=mesh, rngs=nnx.Rngs(0))
        layer.capacity_factor = None  # capacity = tokens per device: nothing can drop
        nnx.update(layer, shard_params(nnx.state(layer), mesh))
        y1, aux1, g1 = nnx.jit(run)(layer)
        out[name] = {
            "y": float(jnp.max(jnp.abs(y0 - y1))),
            "grad": diff(g0, g1),
            "dropped": float(aux1["dropped_fraction"]),
            "counts_equal": bool(np.array_equal(aux0["expert_counts"], aux1["expert_counts"])),
            "lb": abs(float(aux0["load_balance_loss"] - aux1["load_balance_loss"])),
            "w_gate_spec": str(layer.w_gate[...].sharding.spec),
        }
    layer.capacity_factor = 0.25  # 1 slot per (device, expert): some slots must drop
    _, aux2 = nnx.jit(lambda m: m(x))(layer)
    out["small_capacity_dropped"] = float(aux2["dropped_fraction"])
    return out


def test_expert_parallel_matches_single_device():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(
        [sys.executable, __file__], env=env, capture_output=True, text=True, timeout=300, cwd=REPO
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    for name in ("data2_expert4", "ep2_tp2"):
        r = res[name]
        assert r["y"] < 1e-5, (name, r)
        assert r["grad"] < 1e-4, (name, r)
        assert r["dropped"] == 0.0 and r["counts_equal"] and r["lb"] < 1e-6, (name, r)
    assert res["data2_expert4"]["w_gate_spec"].startswith("P('expert'")
    assert 0.0 < res["small_capacity_dropped"] < 1.0


if __name__ == "__main__":
    print(json.dumps(_check()))
