"""Qwen2-MoE (Qwen1.5-MoE): Qwen2's attention; sparse layers route each token to top-k experts (weights
renormalised only when norm_topk_prob) and add a shared expert gated by sigmoid(shared_expert_gate(x))."""

from __future__ import annotations

import torch

from ..config import ModelConfig
from ..layers.attention import Attention
from ..layers.decoder import PreNormBlock, layer_windows
from ..layers.mlp import GatedMLP
from ..layers.moe import Experts, SparseMoeBlock, TopKRouter, fuse_expert_weights, split_expert_weights
from ..layers.norm import RMSNorm
from .family import FamilyLM, default_rotary

EXPERT_NAMES = ("gate_proj", "up_proj", "down_proj")


def is_sparse_layer(config: ModelConfig, layer_idx: int) -> bool:
    step = config.get("decoder_sparse_step", 1) or 1
    return (layer_idx not in (config.get("mlp_only_layers") or []) and config.get("num_experts", 0) > 0
            and (layer_idx + 1) % step == 0)


class Qwen2MoeForCausalLM(FamilyLM):
    def __init__(self, config: ModelConfig, attn_implementation: str = "sdpa"):
        super().__init__(config)
        windows = layer_windows(config)
        layers = [self.block(config, i, windows[i], attn_implementation) for i in range(config.num_hidden_layers)]
        self.assemble(layers, RMSNorm(config.hidden_size, config.rms_norm_eps), {"default": default_rotary(config)})

    @staticmethod
    def feed_forward(config: ModelConfig, layer_idx: int):
        hidden, act = config.hidden_size, config.hidden_act
        if not is_sparse_layer(config, layer_idx):
            return GatedMLP(hidden, config.intermediate_size, act)
        experts = config.get("num_experts")
        shared_size = config.get("shared_expert_intermediate_size") or 0
        return SparseMoeBlock(
            TopKRouter(hidden, experts, config.get("num_experts_per_tok"),
                       normalize=bool(config.get("norm_topk_prob"))),
            Experts(experts, hidden, config.get("moe_intermediate_size"), act),
            shared_expert=GatedMLP(hidden, shared_size, act) if shared_size else None,
            shared_expert_gate=torch.nn.Linear(hidden, 1, bias=False) if shared_size else None,
        )

    @classmethod
    def block(cls, config: ModelConfig, layer_idx: int, window: int | None, attn_implementation: str):
        attention = Attention(
            config.hidden_size, config.num_attention_heads, config.num_key_value_heads, config.head_dim, layer_idx,
            qkv_bias=bool(config.get("qkv_bias", True)), sliding_window=window,
            attn_implementation=attn_implementation,
        )
        return PreNormBlock(attention, cls.feed_forward(config, layer_idx),
                            RMSNorm(config.hidden_size, config.rms_norm_eps),
                            RMSNorm(config.hidden_size, config.rms_norm_eps), sliding_window=window)

    @classmethod
    def sanitize(cls, config: ModelConfig, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return super().sanitize(config, fuse_expert_weights(weights, *EXPERT_NAMES))

    @classmethod
    def checkpoint_weights(cls, config: ModelConfig, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return split_expert_weights(super().checkpoint_weights(config, weights), *EXPERT_NAMES)
