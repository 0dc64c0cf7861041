"""Run in a subprocess with 8 forced CPU devices (see test_meshes.py): every mesh shape gives the
single-device loss, and a checkpoint saved on fsdp=8 restores onto data=2 x fsdp=4."""

import json
import os
import sys

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"

import jax  # noqa: E402
import numpy as np  # noqa: E402

from interaction_jax.config_lib import load_config  # noqa: E402
from interaction_jax.model.interaction_model import dummy_batch  # noqa: E402
from interaction_jax.parallel import make_mesh  # noqa: E402
from interaction_jax.train import checkpoint as ckpt  # noqa: E402
from interaction_jax.train.state import abstract_state_on, create_train_state  # noqa: E402
from interaction_jax.train.step import make_train_step, to_global_batch  # noqa: E402

SHAPES = [
    {"data": 8},
    {"fsdp": 8},
    {"data": 2, "fsdp": 4},
    {"data": 2, "fsdp": 2, "tensor": 2},
    {"data": 2, "expert": 4},
]


def ep_layers(setup, state) -> int:
    """MoE layers of the train step's model that take the expert-parallel (all-to-all) path."""
    from flax import nnx

    from interaction_jax.model.moe import MoEFeedForward
    from interaction_jax.model.moe.expert_parallel import expert_parallel_active

    model = nnx.merge(setup.graphdef, state["params"], state["rest"])
    return sum(isinstance(m, MoEFeedForward) and expert_parallel_active(m.mesh) for _, m in nnx.iter_modules(model))


def losses_on(config, mesh, batch, steps=2):
    setup, state = create_train_state(config, mesh)
    step = make_train_step(config, setup)
    out = []
    for _ in range(steps):
        state, m = step(state, to_global_batch(batch, setup))
        out.append(float(m["loss"]))
    return out, state, ep_layers(setup, state)


def main(config_path, workdir):
    assert jax.device_count() == 8, jax.devices()
    config = load_config(
        config_path,
        [
            "model.layer_pattern=dense,moe",
            "model.moe.impl=ragged_dot",
            # the expert mesh runs expert parallelism (all-to-all dispatch); a capacity that holds
            # every token-slot (>= E / k) keeps it dropless, so its loss equals one device's
            "model.moe.capacity_factor=8.0",
            "train.warmup_steps=1",
            "train.async_checkpointing=False",
        ],
    )
    batch = {k: np.asarray(v) for k, v in dummy_batch(config, 8, 3, seed=1).items()}
    ref, _, _ = losses_on(config, make_mesh({"data": 1}, devices=jax.devices()[:1]), batch)
    result = {"reference": ref, "meshes": {}, "ep_layers": {}}
    for shape in SHAPES:
        got, state, n_ep = losses_on(config, make_mesh(shape), batch)
        result["meshes"][json.dumps(shape)] = got
        result["ep_layers"][json.dumps(shape)] = n_ep
        if shape == {"fsdp": 8}:
            saved_params = jax.device_get(state["params"])
            mgr = ckpt.make_manager(workdir, config.train)
            ckpt.save(mgr, 2, state, force=True)
            mgr.wait_until_finished()
    # restore the fsdp=8 checkpoint onto data=2 x fsdp=4
    mesh2 = make_mesh({"data": 2, "fsdp": 4})
    _, target = abstract_state_on(config, mesh2)
    mgr = ckpt.make_manager(workdir, config.train)
    restored, step = ckpt.restore(mgr, target)
    same = all(
        np.array_equal(np.asarray(a), np.asarray(b))
        for a, b in zip(jax.tree.leaves(saved_params), jax.tree.leaves(jax.device_get(restored["params"])))
    )
    on_new_mesh = all(x.sharding.mesh.shape == mesh2.shape for x in jax.tree.leaves(restored["params"]))
    result["restore"] = {"step": step, "identical": bool(same), "on_new_mesh": bool(on_new_mesh)}
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
