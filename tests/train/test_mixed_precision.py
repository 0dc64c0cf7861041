"""bf16 compute with fp32 master weights trains and keeps the parameters in float32."""

import jax
import jax.numpy as jnp
import numpy as np
from conftest import config_path

from interaction_jax.config_lib import load_config
from interaction_jax.model.interaction_model import dummy_batch
from interaction_jax.parallel import make_mesh
from interaction_jax.train.state import create_train_state
from interaction_jax.train.step import make_train_step, to_global_batch


def test_bf16_compute_fp32_params_step():
    cfg = load_config(config_path("tiny.py"), ["model.dtype=bfloat16", "model.num_layers=1", "train.warmup_steps=1"])
    setup, state = create_train_state(cfg, make_mesh({"data": 1}, devices=jax.devices()[:1]))
    before = jax.device_get(state["params"])
    step = make_train_step(cfg, setup)
    batch = to_global_batch({k: np.asarray(v) for k, v in dummy_batch(cfg, 2, 2).items()}, setup)
    for _ in range(2):  # the warmup schedule starts at learning rate 0
        state, m = step(state, batch)
    assert np.isfinite(float(m["loss"]))
    leaves = jax.tree.leaves(state["params"])
    assert all(x.dtype == jnp.float32 for x in leaves)
    assert any(not np.array_equal(a, np.asarray(b)) for a, b in zip(jax.tree.leaves(before), leaves))
