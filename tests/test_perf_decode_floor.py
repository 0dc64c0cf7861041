"""experiments/perf/machine_floor.py and decode_floor.py: the floor arithmetic on hand-computed inputs."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from conftest import REPO, load_script

PERF = REPO / "experiments" / "perf"


def _module(name):
    return load_script(PERF / f"{name}.py", f"_perf_{name}")


MODEL = SimpleNamespace(d_model=8, num_heads=2, num_kv_heads=1, head_dim=4, ffn_dim=16, num_layers=3)


def test_bytes_and_flops_of_known_shapes():
    mf = _module("machine_floor")
    w = mf.matmuls([(2, 3), (4, 5)], rows=3)  # 6 + 20 numbers
    assert (w.bytes, w.flops) == (104, 156)
    # 3 queries after 10 cached positions attend to 11, 12, 13 keys: 36 pairs; 13 K and V rows read
    a = mf.attention(layers=2, heads=4, kv_heads=2, head_dim=8, rows=3, cached=10)
    assert (a.bytes, a.flops) == (4 * 2 * 2 * 2 * 8 * 13, 4 * 2 * 4 * 8 * 36)
    # per layer q 8x8, k 8x4, v 8x4, o 8x8, gate/up 8x16, down 16x8 = 576 numbers, 3 layers
    assert sum(i * o for i, o in mf.backbone_shapes(MODEL)) == 1728
    # + text head 8x10; 2 rows after 5 cached: 7 K/V rows per layer, 6 + 7 = 13 pairs
    c = mf.model_call(MODEL, vocab=10, rows=2, cached=5)
    assert (c.bytes, c.flops) == (4 * 1808 + 4 * 3 * 2 * 4 * 7, 2 * 2 * 1808 + 4 * 3 * 2 * 4 * 13)
    # field: in 6x4, time 4x4, up 4x8, down 8x4, out 4x6 = 128 numbers; cond 8x4 once
    mid = mf.flow_ode(d_model=8, frames=2, n_mels=3, hidden=4, layers=1, steps=2, solver="midpoint")
    assert (mid.bytes, mid.flops) == (4 * (32 + 4 * 128), 2 * (32 + 4 * 128))
    euler = mf.flow_ode(d_model=8, frames=2, n_mels=3, hidden=4, layers=1, steps=2, solver="euler")
    assert euler.bytes == 4 * (32 + 2 * 128)


def test_least_time_is_the_slower_of_reading_and_computing():
    mf = _module("machine_floor")
    reads = mf.Work(bytes=2e9, flops=1e9)
    assert reads.ms(gb_s=10.0, gflop_s=100.0) == pytest.approx(200.0)
    assert reads.bound(10.0, 100.0) == "bandwidth"
    sums = mf.Work(bytes=1e6, flops=1e12)
    assert sums.ms(gb_s=10.0, gflop_s=100.0) == pytest.approx(10_000.0)
    assert sums.bound(10.0, 100.0) == "compute"


def test_shapes_count_the_tiny_models_own_weights(tiny_config):
    """The counted matrices are the model's: its backbone attention/FFN and flow-head weights."""
    import numpy as np
    from flax import nnx

    from interaction_jax.model.interaction_model import InteractionModel

    mf = _module("machine_floor")
    model = InteractionModel(tiny_config, rngs=nnx.Rngs(0))
    flat = [("/".join(map(str, p)), np.size(v[...])) for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))]
    backbone = sum(n for p, n in flat if p.startswith("backbone/") and ("/attn/" in p or "/ffn/" in p))
    flow = sum(n for p, n in flat if p.startswith("flow/") and p.endswith("/w"))
    m, fh = tiny_config.model, model.flow
    assert sum(i * o for i, o in mf.backbone_shapes(m)) == backbone
    one_eval = mf.flow_ode(int(m.d_model), fh.frames, fh.n_mels, fh.hidden_dim, len(fh.ups), 1, "euler")
    assert one_eval.bytes == 4 * flow


def test_engine_cache_and_unsupported_configs():
    df = _module("decode_floor")
    # a 10 s session of 0.2 s micro-turns, 20 timed: set at turn 29, compiled there, timed from turn 30
    assert df.first_timed_cache(SimpleNamespace(micro_turn_s=0.2, positions_per_turn=36), 20) == 30 * 36
    from interaction_jax.errors import UserError

    with pytest.raises(UserError, match="dense full-causal"):
        df.config("small_moe")
