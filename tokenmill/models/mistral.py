"""Mistral: Llama's layout with every layer attending through a sliding window (when the config sets one)."""

from __future__ import annotations

from ..config import ModelConfig
from ..layers.attention import Attention
from ..layers.decoder import PreNormBlock
from ..layers.mlp import GatedMLP
from ..layers.norm import RMSNorm
from .family import FamilyLM, default_rotary


class MistralForCausalLM(FamilyLM):
    def __init__(self, config: ModelConfig, attn_implementation: str = "sdpa"):
        super().__init__(config)
        window = config.get("sliding_window") or None
        layers = [self.block(config, i, window, attn_implementation) for i in range(config.num_hidden_layers)]
        self.assemble(layers, RMSNorm(config.hidden_size, config.rms_norm_eps), {"default": default_rotary(config)})

    @staticmethod
    def block(config: ModelConfig, layer_idx: int, window: int | None, attn_implementation: str) -> PreNormBlock:
        attention = Attention(
            config.hidden_size, config.num_attention_heads, config.num_key_value_heads, config.head_dim, layer_idx,
            qkv_bias=config.attention_bias, out_bias=config.attention_bias, sliding_window=window,
            attn_implementation=attn_implementation,
        )
        return PreNormBlock(
            attention, GatedMLP(config.hidden_size, config.intermediate_size, config.hidden_act, config.mlp_bias),
            RMSNorm(config.hidden_size, config.rms_norm_eps), RMSNorm(config.hidden_size, config.rms_norm_eps),
            sliding_window=window,
        )
