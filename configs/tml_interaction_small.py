"""Paper-scale interaction model: ~276B total / ~12B active parameters (published size).

Never materialised in tests: `jax.eval_shape` builds it abstractly and the counts are checked
(tests/model/test_configs.py; `python -m interaction_jax.summary --config=configs/tml_interaction_small.py`).

Shape: 64 MoE layers of width 4096, GQA 32 query / 8 KV heads of 128, 128 routed experts of
width 2720 with top-4 routing (every layer MoE), a 128K text table (tied; room for a
SentencePiece vocabulary, `text.tokenizer=sentencepiece`), bf16 compute with fp32 params.

Suggested mesh (TPU v5p-2048 pod slice, 1024 chips, 95 GB HBM each):
    --config.mesh.data=1 --config.mesh.fsdp=16 --config.mesh.expert=16 --config.mesh.tensor=4
Experts (98% of the weights) shard 16-way over `expert` and 4-way over `tensor` (expert_mlp);
attention and embeddings shard over `fsdp` x `tensor`. fp32 params + Adam moments are ~3.3 TB,
~3.2 GB per chip, leaving the HBM to activations (`remat="dots"`). On GPUs (8x H100 nodes)
keep `tensor` within a node (<= 8) and put `expert` across nodes.
"""

from interaction_jax.config_lib import base_config


def get_config(arg=None):
    del arg
    c = base_config()
    c.data.window_micro_turns = 150  # 30 s windows, 5400 positions
    c.data.batch_size = 256
    c.model.d_model = 4096
    c.model.num_layers = 64
    c.model.num_heads = 32
    c.model.num_kv_heads = 8
    c.model.head_dim = 128
    c.model.ffn_dim = 16384  # only used if layer_pattern mixes in "dense"
    c.model.layer_pattern = "moe"
    c.model.vocab_size = 131072
    c.model.tie_embeddings = True
    c.model.dtype = "bfloat16"
    c.model.param_dtype = "float32"
    c.model.remat = "dots"
    c.model.moe.num_experts = 128
    c.model.moe.top_k = 4
    c.model.moe.expert_ffn_dim = 2720
    c.model.moe.router = "sigmoid"
    c.model.moe.impl = "ragged_dot"
    c.model.flow.hidden_dim = 1024
    c.model.flow.num_layers = 4
    c.model.flow.ode_steps = 8
    c.model.sliding_window = 0
    return c
