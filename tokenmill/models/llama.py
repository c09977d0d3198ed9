"""Llama 2/3/3.x, SmolLM2, TinyLlama: pre-norm RMSNorm, grouped-query attention, RoPE (with its scalings), SwiGLU.

The reference shape that RMSPreNormLM implements; Llama itself differs in nothing but having no window.
"""

from __future__ import annotations

from ..config import ModelConfig
from .family import Family, RMSPreNormLM


class LlamaForCausalLM(RMSPreNormLM):
    @staticmethod
    def layer_windows(config: ModelConfig) -> list[int | None]:
        return [None] * config.num_hidden_layers


FAMILY = Family("llama", LlamaForCausalLM)
