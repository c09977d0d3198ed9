"""Gemma (1): Llama's layout with GeGLU, RMSNorm scaling by (1 + weight), embeddings scaled by √hidden."""

from __future__ import annotations

from ..config import ModelConfig
from ..layers.attention import Attention
from ..layers.decoder import PreNormBlock
from ..layers.mlp import GatedMLP
from ..layers.norm import RMSNorm
from ..loading.gguf_arch import ArchSpec, decoder_config
from .base import CausalLM
from .family import Family, default_rotary


def gemma_activation(config: ModelConfig) -> str:
    """Gemma configs name the MLP activation `hidden_activation` (Gemma 1 also had `hidden_act`)."""
    return config.get("hidden_activation") or config.hidden_act or "gelu_pytorch_tanh"


class GemmaForCausalLM(CausalLM):
    def __init__(self, config: ModelConfig, attn_implementation: str = "sdpa"):
        super().__init__(config)
        layers = [self.block(config, i, attn_implementation) for i in range(config.num_hidden_layers)]
        self.assemble(layers, RMSNorm(config.hidden_size, config.rms_norm_eps, unit_offset=True),
                      {"default": default_rotary(config)}, embed_scale=config.hidden_size**0.5)

    @staticmethod
    def block(config: ModelConfig, layer_idx: int, attn_implementation: str) -> PreNormBlock:
        attention = Attention(
            config.hidden_size, config.num_attention_heads, config.num_key_value_heads, config.head_dim, layer_idx,
            qkv_bias=config.attention_bias, out_bias=config.attention_bias, attn_implementation=attn_implementation,
        )
        return PreNormBlock(
            attention, GatedMLP(config.hidden_size, config.intermediate_size, config.hidden_act),
            RMSNorm(config.hidden_size, config.rms_norm_eps, unit_offset=True),
            RMSNorm(config.hidden_size, config.rms_norm_eps, unit_offset=True),
        )


def gguf_config(m, tensors: dict, read) -> dict:
    config = decoder_config(m, tensors, "gemma", "GemmaForCausalLM")
    config.update(hidden_act="gelu_pytorch_tanh", hidden_activation="gelu_pytorch_tanh")
    return config


GGUF = ArchSpec("gemma", gguf_config, norm_offset=True)  # llama.cpp stores the (1 + w) norms as w + 1


FAMILY = Family("gemma", GemmaForCausalLM, gguf=GGUF)
