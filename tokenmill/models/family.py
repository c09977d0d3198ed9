"""What the architecture files share beyond CausalLM: the `Family` record each declares for the registry, and
(RMSPreNormLM) the Llama-shaped families' common constructor."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..config import ModelConfig
from ..layers.attention import Attention
from ..layers.decoder import PreNormBlock, layer_windows
from ..layers.mlp import GatedMLP
from ..layers.norm import RMSNorm
from ..layers.rope import RotaryEmbedding
from ..loading.gguf_arch import ArchSpec
from .base import CausalLM


@dataclass(frozen=True)
class Family:
    """One architecture as the registry sees it: each models/<family>.py declares `FAMILY = Family(...)`."""

    model_type: str  # transformers' config.json `model_type`
    causal_lm: type  # the CausalLM subclass that runs it
    gguf: ArchSpec | None = None  # the llama.cpp architecture this family reads, if it owns one


def default_rotary(config: ModelConfig, rope_parameters: dict | None = None) -> RotaryEmbedding:
    return RotaryEmbedding(config.head_dim, rope_parameters or config.rope_parameters,
                           config.max_position_embeddings)


def uniform_windows(config: ModelConfig) -> list[int | None]:
    """The same window (or none) on every layer: Mistral, Mixtral, Phi-3."""
    return [config.get("sliding_window") or None] * config.num_hidden_layers


class RMSPreNormLM(CausalLM):
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
