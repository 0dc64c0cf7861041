"""Small dense config (~62M parameters): the CPU / single-GPU experiment size.

Full default layout (16 video patches of a 160x160 frame, 36 positions per micro-turn), a
14-layer GQA transformer of width 512. `python -m interaction_jax.summary --config=configs/small.py`
prints the exact count.
"""

from interaction_jax.config_lib import base_config


def get_config(arg=None):
    del arg
    c = base_config()
    c.data.window_micro_turns = 40  # 8 s windows, 1440 positions
    c.data.batch_size = 8
    c.model.d_model = 512
    c.model.num_layers = 14
    c.model.num_heads = 8
    c.model.num_kv_heads = 4
    c.model.head_dim = 64
    c.model.ffn_dim = 2048
    c.model.layer_pattern = "dense"
    c.model.flow.hidden_dim = 512
    c.model.flow.num_layers = 3
    return c
