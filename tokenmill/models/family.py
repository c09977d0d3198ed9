"""What the architecture files share beyond CausalLM: tied-head handling in checkpoints, the assembly of an
embed → blocks → norm → lm_head model, and (RMSPreNormLM) the Llama-shaped families' common constructor."""

from __future__ import annotations

import torch
from torch import nn

from ..config import ModelConfig
from ..layers.attention import Attention
from ..layers.decoder import PreNormBlock, layer_windows
from ..layers.mlp import GatedMLP
from ..layers.norm import RMSNorm
from ..layers.rope import RotaryEmbedding
from .base import CausalLM, DecoderModel


class FamilyLM(CausalLM):
    @classmethod
    def sanitize(cls, config: ModelConfig, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        weights = super().sanitize(config, weights)
        if config.tie_word_embeddings:
            weights.pop("lm_head.weight", None)  # some checkpoints store the tied copy too
        return weights

    def assemble(self, layers: list[nn.Module], norm: nn.Module, rotaries: dict[str, RotaryEmbedding],
                 embed_scale: float | None = None, lm_head_bias: bool = False) -> None:
        config = self.config
        self.model = DecoderModel(nn.Embedding(config.vocab_size, config.hidden_size), layers, norm, rotaries,
                                  embed_scale=embed_scale)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=lm_head_bias)
        self.tie_weights()


def default_rotary(config: ModelConfig, rope_parameters: dict | None = None) -> RotaryEmbedding:
    return RotaryEmbedding(config.head_dim, rope_parameters or config.rope_parameters,
                           config.max_position_embeddings)


def uniform_windows(config: ModelConfig) -> list[int | None]:
    """The same window (or none) on every layer: Mistral, Mixtral, Phi-3."""
    return [config.get("sliding_window") or None] * config.num_hidden_layers


class RMSPreNormLM(FamilyLM):
    """Llama-shaped families: RMSNorm → attention, RMSNorm → feed-forward. A family overrides only the hooks
    where it differs (which layers slide, attention options, the feed-forward, the rotary schedule)."""

    def __init__(self, config: ModelConfig, attn_implementation: str = "sdpa"):
        super().__init__(config)
        windows = self.layer_windows(config)
        layers = [self.block(config, i, windows[i], attn_implementation) for i in range(config.num_hidden_layers)]
        self.assemble(layers, RMSNorm(config.hidden_size, config.rms_norm_eps), {"default": self.rotary(config)})

    @staticmethod
    def layer_windows(config: ModelConfig) -> list[int | None]:
        return layer_windows(config)

    @staticmethod
    def rotary(config: ModelConfig) -> RotaryEmbedding:
        return default_rotary(config)

    @staticmethod
    def attention_options(config: ModelConfig) -> dict:
        return {"qkv_bias": config.attention_bias, "out_bias": config.attention_bias}

    @staticmethod
    def feed_forward(config: ModelConfig, layer_idx: int) -> nn.Module:
        return GatedMLP(config.hidden_size, config.intermediate_size, config.hidden_act, config.mlp_bias)

    @classmethod
    def block(cls, config: ModelConfig, layer_idx: int, window: int | None, attn_implementation: str) -> PreNormBlock:
        attention = Attention(
            config.hidden_size, config.num_attention_heads, config.num_key_value_heads, config.head_dim, layer_idx,
            sliding_window=window, attn_implementation=attn_implementation, **cls.attention_options(config),
        )
        return PreNormBlock(attention, cls.feed_forward(config, layer_idx),
                            RMSNorm(config.hidden_size, config.rms_norm_eps),
                            RMSNorm(config.hidden_size, config.rms_norm_eps), sliding_window=window)
