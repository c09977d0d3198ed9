"""Gemma 2: alternating local (sliding-window) and global layers, norms before and after attention and MLP,
attention-score and final-logit soft-capping, queries scaled by query_pre_attn_scalar^-0.5."""

from __future__ import annotations

from ..config import ModelConfig
from ..layers.attention import Attention
from ..layers.decoder import SandwichBlock, layer_windows
from ..layers.mlp import GatedMLP
from ..layers.norm import RMSNorm
from ..loading.gguf_arch import DECODER_LAYER, ArchSpec, Metadata, decoder_config
from .base import CausalLM
from .family import Family, default_rotary
from .gemma import gemma_activation


def gemma_norm(config: ModelConfig, dim: int | None = None) -> RMSNorm:
    return RMSNorm(dim or config.hidden_size, config.rms_norm_eps, unit_offset=True)


def gemma_scaling(config: ModelConfig) -> float:
    return float(config.get("query_pre_attn_scalar") or config.head_dim) ** -0.5


def sandwich_block(attention: Attention, config: ModelConfig, window: int | None, rope_key: str = "default"):
    mlp = GatedMLP(config.hidden_size, config.intermediate_size, gemma_activation(config))
    return SandwichBlock(attention, mlp, gemma_norm(config), gemma_norm(config), gemma_norm(config),
                         gemma_norm(config), sliding_window=window, rope_key=rope_key)


class Gemma2ForCausalLM(CausalLM):
    def __init__(self, config: ModelConfig, attn_implementation: str = "sdpa"):
        super().__init__(config)
        self.final_logit_softcap = config.get("final_logit_softcapping")
        windows = layer_windows(config, sliding_pattern=2)
        layers = [self.block(config, i, windows[i], attn_implementation) for i in range(config.num_hidden_layers)]
        self.assemble(layers, gemma_norm(config), {"default": default_rotary(config)},
                      embed_scale=config.hidden_size**0.5)

    @staticmethod
    def block(config: ModelConfig, layer_idx: int, window: int | None, attn_implementation: str) -> SandwichBlock:
        attention = Attention(
            config.hidden_size, config.num_attention_heads, config.num_key_value_heads, config.head_dim, layer_idx,
            qkv_bias=config.attention_bias, out_bias=config.attention_bias, scaling=gemma_scaling(config),
            softcap=config.get("attn_logit_softcapping"), sliding_window=window,
            attn_implementation=attn_implementation,
        )
        return sandwich_block(attention, config, window)


def gguf_attention_scalar(config: dict) -> float:
    """llama.cpp scales Gemma 2/3 queries by head_dim, except the 27B model (62 layers): hidden / heads."""
    if config["num_hidden_layers"] == 62:
        return config["hidden_size"] // config["num_attention_heads"]
    return config["head_dim"]


def gguf_config(m: Metadata, tensors: dict, read) -> dict:
    config = decoder_config(m, tensors, "gemma2", "Gemma2ForCausalLM")
    layers = config["num_hidden_layers"]
    config.update(
        hidden_act="gelu_pytorch_tanh",
        hidden_activation="gelu_pytorch_tanh",
        query_pre_attn_scalar=gguf_attention_scalar(config),
        sliding_window=m("attention.sliding_window", 4096),
        attn_logit_softcapping=m("attn_logit_softcapping", 50.0),
        final_logit_softcapping=m("final_logit_softcapping", 30.0),
        # even-numbered layers (0, 2, ...) use the sliding window
        layer_types=["sliding_attention" if (i + 1) % 2 else "full_attention" for i in range(layers)],
    )
    return config


# four norms per layer; llama.cpp's ffn_norm is the one *before* the MLP here
GGUF_LAYER = DECODER_LAYER | {
    "ffn_norm": "pre_feedforward_layernorm",
    "post_attention_norm": "post_attention_layernorm",
    "post_ffw_norm": "post_feedforward_layernorm",
}
GGUF = ArchSpec("gemma2", gguf_config, layer_names=GGUF_LAYER, norm_offset=True)


FAMILY = Family("gemma2", Gemma2ForCausalLM, gguf=GGUF)
