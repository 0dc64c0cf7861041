"""Quickstart config: a small curriculum that a CPU learns in a few minutes (`make quickstart`).

One behaviour the turn-based cascade cannot match: answering a spoken question as soon as it
ends. The cascade must wait out its silence threshold before it may answer; this model hears
every 200 ms micro-turn and learns when a question has ended. Trained only on turn-taking
episodes with spoken questions (`turntaking_spoken`), whole 8 s episodes as windows from
position 0, half of the windows with the model's own audio muted (`train.self_audio_dropout`).
What it says is not graded here (a model this small babbles): the quickstart reports takeover
and response latency beside the cascade's.

    python -m interaction_jax.quickstart --config=configs/quickstart.py --workdir=runs/quickstart
"""

from interaction_jax.config_lib import base_config


def get_config(arg=None):
    del arg
    c = base_config()
    c.layout.video_patches = 0
    c.data.task = "turntaking_spoken"
    c.data.num_episodes = 96
    c.data.eval_num_episodes = 8
    c.data.episode_seconds = 8.0
    c.data.window_micro_turns = 40  # the whole episode, from position 0
    c.data.batch_size = 4
    c.data.read_threads = 1
    c.model.d_model = 64
    c.model.num_layers = 2
    c.model.num_heads = 4
    c.model.num_kv_heads = 2
    c.model.head_dim = 16
    c.model.ffn_dim = 192
    c.model.flow.hidden_dim = 64
    c.model.flow.ode_steps = 4
    c.model.scan_layers = False  # CPU speed, same function (docs/training.md, "Small models on CPU")
    c.model.attention_impl = "xla_causal_blocks"
    c.train.num_steps = 300
    c.train.learning_rate = 3e-3
    c.train.warmup_steps = 20
    c.train.weight_decay = 0.05
    c.train.log_every = 25
    c.train.self_audio_dropout = 0.5
    c.inference.slots = 8
    return c
