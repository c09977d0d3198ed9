"""Llama 2/3/3.x, SmolLM2, TinyLlama (and Mistral checkpoints without a window): pre-norm, GQA, RoPE, SwiGLU."""

from __future__ import annotations

import torch
from torch import nn

from ..config import ModelConfig
from ..layers.attention import Attention
from ..layers.mlp import GatedMLP
from ..layers.norm import RMSNorm
from ..layers.rope import RotaryEmbedding
from .base import CausalLM, DecoderModel


class LlamaDecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, layer_idx: int, attn_implementation: str,
                 sliding_window: int | None = None):
        super().__init__()
        self.sliding_window = sliding_window
        self.self_attn = Attention(
            config.hidden_size, config.num_attention_heads, config.num_key_value_heads, config.head_dim,
            layer_idx, qkv_bias=config.attention_bias, out_bias=config.attention_bias,
            sliding_window=sliding_window, attn_implementation=attn_implementation,
        )
        self.mlp = GatedMLP(config.hidden_size, config.intermediate_size, config.hidden_act, config.mlp_bias)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, hidden, rope, mask, cache):
        hidden = hidden + self.self_attn(self.input_layernorm(hidden), rope, mask, cache)
        return hidden + self.mlp(self.post_attention_layernorm(hidden))


class LlamaForCausalLM(CausalLM):
    layer_class = LlamaDecoderLayer

    def __init__(self, config: ModelConfig, attn_implementation: str = "sdpa"):
        super().__init__(config)
        layers = [self.layer_class(config, i, attn_implementation, self.layer_window(config, i))
                  for i in range(config.num_hidden_layers)]
        rotary = RotaryEmbedding(config.head_dim, config.rope_parameters, config.max_position_embeddings)
        self.model = DecoderModel(
            nn.Embedding(config.vocab_size, config.hidden_size), layers,
            RMSNorm(config.hidden_size, config.rms_norm_eps), {"default": rotary},
        )
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.tie_weights()

    @staticmethod
    def layer_window(config: ModelConfig, layer_idx: int) -> int | None:
        return None

    @classmethod
    def sanitize(cls, config: ModelConfig, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        weights = super().sanitize(config, weights)
        if config.tie_word_embeddings:
            weights.pop("lm_head.weight", None)
        return weights
