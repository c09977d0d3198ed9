"""Qwen3: RMSNorm on each head's queries and keys before RoPE, no projection bias; optional sliding layers."""

from __future__ import annotations

from ..config import ModelConfig
from ..loading.gguf_arch import ArchSpec, decoder_config
from .family import Family, RMSPreNormLM


class Qwen3ForCausalLM(RMSPreNormLM):
    @staticmethod
    def attention_options(config: ModelConfig) -> dict:
        return {"qkv_bias": config.attention_bias, "out_bias": config.attention_bias,
                "qk_norm_eps": config.rms_norm_eps}


GGUF = ArchSpec("qwen3", lambda m, tensors, read: decoder_config(m, tensors, "qwen3", "Qwen3ForCausalLM"))


FAMILY = Family("qwen3", Qwen3ForCausalLM, gguf=GGUF)
