"""Small MoE config: the same active size as configs/small.py, 8 experts top-2 in every layer.

Each expert is half the dense FFN width (1024 vs 2048), so top-2 routing uses as many FFN
parameters per token as the dense model while holding 4x its FFN parameters in total.
"""

from interaction_jax.config_lib import base_config


def get_config(arg=None):
    del arg
    c = base_config()
    c.data.window_micro_turns = 40
    c.data.batch_size = 8
    c.model.d_model = 512
    c.model.num_layers = 14
    c.model.num_heads = 8
    c.model.num_kv_heads = 4
    c.model.head_dim = 64
    c.model.ffn_dim = 2048  # unused with layer_pattern="moe"; kept for "dense,moe" overrides
    c.model.layer_pattern = "moe"
    c.model.moe.num_experts = 8
    c.model.moe.top_k = 2
    c.model.moe.expert_ffn_dim = 1024
    c.model.flow.hidden_dim = 512
    c.model.flow.num_layers = 3
    return c
