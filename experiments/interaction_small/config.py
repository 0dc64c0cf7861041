"""interaction_small: the reproduction experiment's model, sized for one hour on a 2-core CPU.

Why this size (between configs/tiny.py and configs/small.py): `small` (62M) takes ~11 s per
step of 2 x 8 s windows on this CPU (experiments/perf/results/train_throughput.json), i.e.
~300 steps in an hour — far too few to learn the task mix; `tiny` (0.3M, width 64) trains fast
but its width limits how much of the spoken instructions it can parse. A 4-layer, width-160
model (1.9M parameters) runs a step of 8 windows of 8 s (40 micro-turns, 800 positions) in
~3.3 s (0.30 steps/s, the trainer's logged rate when the CPU was not shared), so 900 steps
(about four passes over 2000 rendered episodes) fit in an hour with room for the data
rendering and the evaluation. At this size attention over the window dominates
the step on CPU (whole 12 s episodes cost 2x per token), hence 8 s windows and 2 wide heads;
a TimeSpeak delay of up to 5 s still fits in a window with its instruction most of the time.

Video is off: no synthetic task depends on the frames, and 16 patches per micro-turn would
nearly double the sequence length. The full layout is otherwise the default one.

    python experiments/interaction_small/run.py     # prepare, train, evaluate, report; or just train:
    python -m interaction_jax.train --config=experiments/interaction_small/config.py \
        --workdir=runs/interaction_small/run
"""

from interaction_jax.config_lib import base_config


def get_config(arg=None):
    del arg
    c = base_config()
    c.layout.video_patches = 0
    c.data.task = "mix"
    c.data.data_dir = "runs/interaction_small/data/train"
    c.data.eval_data_dir = "runs/interaction_small/data/eval"
    c.data.num_episodes = 2000
    c.data.eval_num_episodes = 64
    c.data.episode_seconds = 12.0
    c.data.window_micro_turns = 40  # 8 s windows cropped from 12 s episodes
    c.data.batch_size = 8
    c.data.read_threads = 1
    c.model.d_model = 160
    c.model.num_layers = 4
    c.model.num_heads = 2  # few wide heads: on CPU the [B, H, T, T] scores dominate the step
    c.model.num_kv_heads = 1
    c.model.head_dim = 80
    c.model.ffn_dim = 512
    c.model.flow.hidden_dim = 160
    c.model.flow.num_layers = 2
    c.model.flow.ode_steps = 4
    c.train.num_steps = 900
    c.train.learning_rate = 1e-3
    c.train.warmup_steps = 100
    c.train.weight_decay = 0.05
    c.train.log_every = 25
    c.train.eval_every = 300
    c.train.checkpoint_every = 200
    c.inference.slots = 16
    # Sampled text (temperature 0.8, top-p 0.95, the defaults; per-session seeds make runs reproducible).
    # Greedy decoding keeps this model mute: NOTHING is the most likely token in almost every slot.
    c.inference.temperature = 0.8
    return c
