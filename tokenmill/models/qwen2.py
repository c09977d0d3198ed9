"""Qwen2 / Qwen2.5: Llama's layout with a bias on the q/k/v projections (not on o); optional sliding layers."""

from __future__ import annotations

from ..config import ModelConfig
from ..layers.attention import Attention
from ..layers.decoder import PreNormBlock, layer_windows
from ..layers.mlp import GatedMLP
from ..layers.norm import RMSNorm
from .family import FamilyLM, default_rotary


class Qwen2ForCausalLM(FamilyLM):
    def __init__(self, config: ModelConfig, attn_implementation: str = "sdpa"):
        super().__init__(config)
        windows = layer_windows(config)
        layers = [self.block(config, i, windows[i], attn_implementation) for i in range(config.num_hidden_layers)]
        self.assemble(layers, RMSNorm(config.hidden_size, config.rms_norm_eps), {"default": default_rotary(config)})

    @staticmethod
    def block(config: ModelConfig, layer_idx: int, window: int | None, attn_implementation: str) -> PreNormBlock:
        attention = Attention(
            config.hidden_size, config.num_attention_heads, config.num_key_value_heads, config.head_dim, layer_idx,
            qkv_bias=True, sliding_window=window, attn_implementation=attn_implementation,
        )
        return PreNormBlock(
            attention, GatedMLP(config.hidden_size, config.intermediate_size, config.hidden_act),
            RMSNorm(config.hidden_size, config.rms_norm_eps), RMSNorm(config.hidden_size, config.rms_norm_eps),
            sliding_window=window,
        )
