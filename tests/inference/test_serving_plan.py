"""The serving memory plan (`summary --serving_mesh`) against hand-computed bytes, and its flag errors.
(Its per-device bytes against what the engine really places on a mesh: test_engine_mesh.py.)"""

import subprocess
import sys

import pytest
from conftest import REPO, config_path

from interaction_jax.config_lib import load_config
from interaction_jax.errors import UserError
from interaction_jax.inference.sharding import parse_mesh_flag, serving_mesh, serving_plan
from interaction_jax.streams.layout import StreamLayout
from interaction_jax.summary import count_params


def test_plan_bytes_by_hand():
    c = load_config(config_path("tiny.py"))
    layout = StreamLayout.from_config(c)
    one, tp2 = serving_plan(c, {}), serving_plan(c, {"tensor": 2})
    total, _ = count_params(c)
    assert one["param_bytes_total"] == one["param_bytes_per_device"] == 4 * total  # float32 parameters
    assert tp2["param_bytes_total"] == 4 * total
    assert 4 * total / 2 < tp2["param_bytes_per_device"] < 4 * total  # norms etc. stay replicated
    # K and V, 2 layers x 2 kv-heads x 16 dims x float32 per position; 5 micro-turns a second
    per_minute = 2 * 2 * 2 * 16 * 4 * layout.positions_per_turn * 60 / layout.micro_turn_s
    assert one["kv_bytes_per_session_minute_per_device"] == round(per_minute)
    assert tp2["kv_bytes_per_session_minute_per_device"] == round(per_minute / 2)  # kv-heads over tensor
    assert serving_plan(c, {"tensor": 4})["kv_bytes_per_session_minute_per_device"] == round(per_minute)  # 2 heads


def test_mesh_flag_and_default():
    assert parse_mesh_flag("tensor=4,expert=16") == {"tensor": 4, "expert": 16}
    for bad in ("tensor", "model=2", "tensor=0", "tensor=x"):
        with pytest.raises(UserError, match="--serving_mesh"):
            parse_mesh_flag(bad)
    assert serving_mesh(load_config(config_path("tiny.py"))) is None  # default: one device, no mesh
    with pytest.raises(UserError, match="needs 64 devices"):
        serving_mesh(load_config(config_path("tiny.py"), ["inference.mesh.tensor=64"]))


def test_summary_cli_bad_mesh_exits_2():
    r = subprocess.run([sys.executable, "-m", "interaction_jax.summary", f"--config={config_path('tiny.py')}",
                        "--serving_mesh=model=2"], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert r.returncode == 2, r.stderr[-2000:]
    assert len(r.stderr.strip().splitlines()) == 1 and "--serving_mesh" in r.stderr, r.stderr


def test_pallas_moe_backends_fall_back_once_under_a_mesh():
    import warnings

    from interaction_jax.inference.sharding import ServingMeshWarning, _SizedMesh, mesh_moe_impl

    mesh = _SizedMesh({"data": 2, "fsdp": 1, "expert": 4, "tensor": 1})
    with pytest.warns(ServingMeshWarning, match="'gather_gemv_interpret'.*runs 'auto'"):
        assert mesh_moe_impl("gather_gemv_interpret", "ragged_dot", mesh) == "auto"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once per backend
        assert mesh_moe_impl("gather_gemv_interpret", "ragged_dot", mesh) == "auto"
        assert mesh_moe_impl("dense", "ragged_dot", mesh) == "dense"  # XLA backends run as asked
        assert mesh_moe_impl("model", "ragged_dot", mesh) == "model"
    with pytest.warns(ServingMeshWarning, match="'pallas_gmm_interpret'"):
        assert mesh_moe_impl("model", "pallas_gmm_interpret", mesh) == "auto"  # the model's own backend


def test_an_axis_that_divides_nothing_is_named():
    from interaction_jax.summary import format_plan

    c = load_config(config_path("tiny.py"))  # 4 heads, 2 kv heads
    odd = serving_plan(c, {"tensor": 3, "data": 2})
    assert odd["idle_axes"] == ["tensor"]
    assert odd["param_bytes_per_device"] == odd["param_bytes_total"]
    assert "note: tensor=3 shards no parameter" in format_plan(odd)
    assert serving_plan(c, {"tensor": 2, "data": 2})["idle_axes"] == []  # data shards sessions: never named
