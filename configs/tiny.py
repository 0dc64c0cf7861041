"""Tiny config: the CPU default for tests and `make quickstart` (seconds per step on CPU).

Usage: --config=configs/tiny.py [--config.model.num_layers=4 ...]
"""

from interaction_jax.config_lib import base_config


def get_config(arg=None):
    del arg
    c = base_config()
    c.layout.video_patches = 4
    c.layout.video_frame_size = 80
    c.data.num_episodes = 16
    c.data.eval_num_episodes = 4
    c.data.episode_seconds = 8.0
    c.data.window_micro_turns = 16
    c.data.batch_size = 4
    c.model.d_model = 64
    c.model.num_layers = 2
    c.model.num_heads = 4
    c.model.num_kv_heads = 2
    c.model.head_dim = 16
    c.model.ffn_dim = 128
    c.model.moe.num_experts = 4
    c.model.moe.top_k = 2
    c.model.moe.expert_ffn_dim = 64
    c.model.flow.hidden_dim = 64
    c.model.flow.ode_steps = 4
    return c
