"""Flax NNX modules of the interaction model (see interaction_model.py for the data flow).

MoE (`model/moe`) is imported lazily by the transformer so the dense path never needs it.
"""

from interaction_jax.model.attention import Attention, attention, make_mask, register_attention_impl, rope
from interaction_jax.model.embeddings import DMelBag, InputEmbedding, TextEmbedding
from interaction_jax.model.flow import FlowHead, odeint
from interaction_jax.model.heads import TextHead
from interaction_jax.model.hmlp import HMLPStem
from interaction_jax.model.interaction_model import InteractionModel, forward, loss_weights, text_loss
from interaction_jax.model.kv_cache import BlockCache, CacheView, register_cache_attention
from interaction_jax.model.transformer import KVCache, Transformer

__all__ = [
    "Attention",
    "BlockCache",
    "CacheView",
    "DMelBag",
    "FlowHead",
    "HMLPStem",
    "InputEmbedding",
    "InteractionModel",
    "KVCache",
    "TextEmbedding",
    "TextHead",
    "Transformer",
    "attention",
    "forward",
    "loss_weights",
    "make_mask",
    "odeint",
    "register_attention_impl",
    "register_cache_attention",
    "rope",
    "text_loss",
]
