"""The streaming engine on an 8-device CPU mesh (`inference.mesh`) equals the one-device engine.

`mesh_engine_worker.py` runs in a subprocess with `--xla_force_host_platform_device_count=8` set
before JAX starts (the rest of the suite keeps its single CPU device). For dense tensor=2 x data=4,
MoE expert=4 x data=2 and dense tensor=8: a teacher-forced slot, with other sessions joining and
leaving around it on the mesh, gives the one-device engine's logits / flow states / mel frames
with that slot alone; parameters and cache carry the rules' shardings; one compilation over 50
micro-turns; no collective of the compiled step moves a cache-sized array; the
memory plan matches the placed bytes; a training checkpoint of another mesh restores onto it.
"""

import json
import os
import subprocess
import sys

from conftest import REPO

HERE = os.path.dirname(os.path.abspath(__file__))


def _run_worker(*names: str) -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    r = subprocess.run([sys.executable, os.path.join(HERE, "mesh_engine_worker.py"), *names], env=env,
                       capture_output=True, text=True, timeout=1500, cwd=REPO)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return json.loads([ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")][-1][7:])


def test_sharded_engine_equals_one_device(tmp_path):
    res = _run_worker(f"--workdir={tmp_path}")
    restore, strategies = res.pop("restore"), res.pop("strategies")
    # cache attention per device under shard_map (Pallas decode kernel in interpret mode included)
    assert set(strategies) == {"dense", "live_window", "pallas_interpret"}, strategies
    assert all(d < 1e-5 for d in strategies.values()), strategies
    for name, r in res.items():
        assert r["turns"] >= 4, (name, r)
        assert r["logits"] < 2e-5 and r["hidden"] < 2e-5 and r["mel"] < 2e-4, (name, r)
        assert r["ticks"] >= 50 and r["compilations"] == 1, (name, r)  # 50 ticks, sessions joining and leaving
        assert r["devices"] == 8, (name, r)
        total, cache_sized = r["collectives"]
        assert total > 0 and cache_sized == 0, (name, r["collectives"])  # the KV cache is never gathered
        assert r["plan"] == r["placed"], (name, r)  # summary --serving_mesh's bytes per device
    dense, moe, tp8 = res["dense_tp2_dp4"], res["moe_ep4_dp2"], res["dense_tp8"]
    # cache [layers, slots, rows, kv_heads, head_dim]: slots over (data, fsdp), kv-heads over tensor
    assert dense["cache_spec"] == "(None, ('data', 'fsdp'), None, 'tensor')", dense
    assert dense["wq_spec"] == "('fsdp', 'tensor')", dense  # a layer's [embed, heads, head_dim]
    # scan keeps the stacked weights: [layers, expert, embed, expert_mlp], [layers, embed, heads, head_dim]
    assert moe["w_gate_spec"] == "(None, 'expert', 'fsdp', 'tensor')", moe
    assert moe["cache_spec"] == dense["cache_spec"] == tp8["cache_spec"], res  # size-1 axes are kept
    assert tp8["wq_spec"] == "(None, 'fsdp', 'tensor')", tp8
    assert not any("replicated" in w for r in res.values() for w in r["warnings"]), res
    # a training checkpoint saved on fsdp=8, restored straight onto tensor=2 x data=4 (sharded, params only)
    assert restore["identical"] and restore["on_serving_mesh"], restore
    shard, full = restore["wq_shard_vs_global"]
    # [layers, embed, heads, head_dim]: each device holds half the heads
    assert shard[2] * 2 == full[2] and shard[:2] == full[:2], restore
    assert restore["logits"] < 2e-5 and restore["logits_scale"] > 0, restore  # served = the one-device engine
    assert restore["compilations"] == 1, restore  # new parameters, same executable
