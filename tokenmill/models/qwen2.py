"""Qwen2 / Qwen2.5: Llama's layout with a bias on the q/k/v projections (not on o); optional sliding layers."""

from __future__ import annotations

from ..config import ModelConfig
from ..loading.gguf_arch import ArchSpec, decoder_config
from .family import Family, RMSPreNormLM


class Qwen2ForCausalLM(RMSPreNormLM):
    @staticmethod
    def attention_options(config: ModelConfig) -> dict:
        return {"qkv_bias": True}


GGUF = ArchSpec("qwen2", lambda m, tensors, read: decoder_config(m, tensors, "qwen2", "Qwen2ForCausalLM"))


FAMILY = Family("qwen2", Qwen2ForCausalLM, gguf=GGUF)
