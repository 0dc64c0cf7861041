"""One process of a 2-process `jax.distributed` serving run on 127.0.0.1 (4 CPU devices each, gloo).

    python multihost_engine_worker.py serve PORT PROCESS_ID   # the engine on a tensor=2 x data=4 mesh
    python multihost_engine_worker.py reference               # one process, the one-device engine

Both processes build the same model (same seed) and step the same host inputs, as a replicated
scheduler would: one session (slot 1) teacher-forced through a short episode, another free-running
beside it. Prints `RESULT {json}` with slot 1's text logits and flow-head states per micro-turn,
the compile count and the process's view of the mesh.
"""

import json
import os
import sys

MODE = sys.argv[1]
N_DEV = 4 if MODE == "serve" else 1
os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={N_DEV}"
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]

import jax  # noqa: E402
import numpy as np  # noqa: E402

SLOT, TICKS = 1, 8
TINY = os.path.join(os.path.dirname(HERE), "..", "configs", "tiny.py")


def main():
    if MODE == "serve":
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(f"127.0.0.1:{sys.argv[2]}", num_processes=2, process_id=int(sys.argv[3]))
    from flax import nnx
    from helpers import episode, forced_inputs, grid_and_window

    from interaction_jax.config_lib import load_config
    from interaction_jax.inference.engine import StreamEngine
    from interaction_jax.model.interaction_model import InteractionModel

    overrides = ["inference.slots=4", "inference.temperature=0"]
    if MODE == "serve":
        overrides += ["inference.mesh.tensor=2", "inference.mesh.data=4"]
    config = load_config(TINY, overrides)
    model = InteractionModel(config, rngs=nnx.Rngs(0))
    _, grid, _ = grid_and_window(config, episode(1.0))
    engine = StreamEngine(config, model, debug_outputs=True)
    engine.reset(SLOT, seed=7)
    engine.reset(3, seed=11)
    rs = np.random.RandomState(3)
    logits, hidden, tokens = [], [], []
    for t in range(TICKS):
        inputs = engine.empty_inputs()
        if t < grid.num_turns:
            forced_inputs(engine, grid, t, SLOT, inputs)
        inputs["dmel"][3] = rs.randint(0, 16, inputs["dmel"][3].shape)  # a free-running session beside it
        inputs["active"][3] = True
        out = engine.step(inputs)
        if t < grid.num_turns:
            logits.append(out["text_logits"][SLOT].tolist())
            hidden.append(out["audio_hidden"][SLOT].tolist())
        tokens.append(out["text_tokens"][3].tolist())
    result = {
        "process": jax.process_index(),
        "processes": jax.process_count(),
        "devices": jax.device_count(),
        "mesh_devices": 0 if engine.mesh is None else int(engine.mesh.devices.size),
        "compilations": engine.compilations(),
        "logits": logits,
        "hidden": hidden,
        "free_running_tokens": tokens,
    }
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
