"""Mixtral: Mistral's attention with a top-k routed mixture of SwiGLU experts in every layer (router
softmax over all experts, the k kept weights renormalised to sum to 1)."""

from __future__ import annotations

import torch

from ..config import ModelConfig
from ..layers.attention import Attention
from ..layers.decoder import PreNormBlock
from ..layers.moe import Experts, SparseMoeBlock, TopKRouter, fuse_expert_weights, split_expert_weights
from ..layers.norm import RMSNorm
from .family import FamilyLM, default_rotary

CHECKPOINT_BLOCK, MODULE_BLOCK = ".block_sparse_moe.", ".mlp."
EXPERT_NAMES = ("w1", "w3", "w2")  # gate, up, down as Mixtral checkpoints call them


class MixtralForCausalLM(FamilyLM):
    def __init__(self, config: ModelConfig, attn_implementation: str = "sdpa"):
        super().__init__(config)
        window = config.get("sliding_window") or None
        layers = [self.block(config, i, window, attn_implementation) for i in range(config.num_hidden_layers)]
        self.assemble(layers, RMSNorm(config.hidden_size, config.rms_norm_eps), {"default": default_rotary(config)})

    @staticmethod
    def block(config: ModelConfig, layer_idx: int, window: int | None, attn_implementation: str) -> PreNormBlock:
        attention = Attention(
            config.hidden_size, config.num_attention_heads, config.num_key_value_heads, config.head_dim, layer_idx,
            sliding_window=window, attn_implementation=attn_implementation,
        )
        experts = config.get("num_local_experts")
        moe = SparseMoeBlock(
            TopKRouter(config.hidden_size, experts, config.get("num_experts_per_tok"), normalize=True),
            Experts(experts, config.hidden_size, config.intermediate_size, config.hidden_act),
        )
        return PreNormBlock(attention, moe, RMSNorm(config.hidden_size, config.rms_norm_eps),
                            RMSNorm(config.hidden_size, config.rms_norm_eps), sliding_window=window)

    @classmethod
    def sanitize(cls, config: ModelConfig, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        renamed = {name.replace(CHECKPOINT_BLOCK, MODULE_BLOCK): t for name, t in weights.items()}
        return super().sanitize(config, fuse_expert_weights(renamed, *EXPERT_NAMES))

    @classmethod
    def checkpoint_weights(cls, config: ModelConfig, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        split = split_expert_weights(super().checkpoint_weights(config, weights), *EXPERT_NAMES)
        return {name.replace(MODULE_BLOCK, CHECKPOINT_BLOCK): t for name, t in split.items()}
