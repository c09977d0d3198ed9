"""What the architecture files (Qwen, Mistral, Gemma, Phi-3, GPT-2, MoE) share beyond CausalLM:
tied-head handling in checkpoints and the assembly of an embed → blocks → norm → lm_head model."""

from __future__ import annotations

import torch
from torch import nn

from ..config import ModelConfig
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
