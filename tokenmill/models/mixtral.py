"""Mixtral: Mistral's attention with a top-k routed mixture of SwiGLU experts in every layer (router
softmax over all experts, the k kept weights renormalised to sum to 1)."""

from __future__ import annotations

import torch

from ..config import ModelConfig
from ..layers.moe import Experts, SparseMoeBlock, TopKRouter, fuse_expert_weights, split_expert_weights
from .family import Family, RMSPreNormLM, uniform_windows

CHECKPOINT_BLOCK, MODULE_BLOCK = ".block_sparse_moe.", ".mlp."
EXPERT_NAMES = ("w1", "w3", "w2")  # gate, up, down as Mixtral checkpoints call them


class MixtralForCausalLM(RMSPreNormLM):
    layer_windows = staticmethod(uniform_windows)

    @staticmethod
    def feed_forward(config: ModelConfig, layer_idx: int) -> SparseMoeBlock:
        experts = config.get("num_local_experts")
        return SparseMoeBlock(
            TopKRouter(config.hidden_size, experts, config.get("num_experts_per_tok"), normalize=True),
            Experts(experts, config.hidden_size, config.intermediate_size, config.hidden_act),
        )

    @classmethod
    def sanitize(cls, config: ModelConfig, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        renamed = {name.replace(CHECKPOINT_BLOCK, MODULE_BLOCK): t for name, t in weights.items()}
        return super().sanitize(config, fuse_expert_weights(renamed, *EXPERT_NAMES))

    @classmethod
    def checkpoint_weights(cls, config: ModelConfig, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        split = split_expert_weights(super().checkpoint_weights(config, weights), *EXPERT_NAMES)
        return {name.replace(MODULE_BLOCK, CHECKPOINT_BLOCK): t for name, t in split.items()}


FAMILY = Family("mixtral", MixtralForCausalLM)
