"""Phi-3 / Phi-3.5 / Phi-4-mini: Llama's layout, with q/k/v and gate/up fused in the checkpoint, partial
rotary dimensions and LongRoPE (su) scaling; every layer windowed when the config sets sliding_window."""

from __future__ import annotations

import re

import torch

from ..config import ModelConfig
from ..layers.rope import RotaryEmbedding
from ..loading.gguf_arch import DECODER_LAYER, ArchSpec, Metadata, decoder_config
from .family import Family, RMSPreNormLM, default_rotary, uniform_windows

_FUSED_QKV = re.compile(r"^(?P<prefix>.+\.self_attn)\.qkv_proj\.(?P<kind>weight|bias)$")
_FUSED_GATE_UP = re.compile(r"^(?P<prefix>.+\.mlp)\.gate_up_proj\.(?P<kind>weight|bias)$")


def phi3_rope_parameters(config: ModelConfig) -> dict:
    """LongRoPE reads original_max_position_embeddings, which Phi-3 configs keep at the top level."""
    params = dict(config.rope_parameters)
    if config.get("original_max_position_embeddings") is not None:
        params.setdefault("original_max_position_embeddings", config.get("original_max_position_embeddings"))
    return params


class Phi3ForCausalLM(RMSPreNormLM):
    layer_windows = staticmethod(uniform_windows)

    @staticmethod
    def rotary(config: ModelConfig) -> RotaryEmbedding:
        return default_rotary(config, phi3_rope_parameters(config))

    @staticmethod
    def _qkv_sizes(config: ModelConfig) -> list[int]:
        kv = config.num_key_value_heads * config.head_dim
        return [config.num_attention_heads * config.head_dim, kv, kv]

    @classmethod
    def sanitize(cls, config: ModelConfig, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Split the checkpoint's qkv_proj into q/k/v and gate_up_proj into gate/up (gate rows first)."""
        out = {}
        for name, tensor in super().sanitize(config, weights).items():
            if match := _FUSED_QKV.match(name):
                for part, piece in zip(("q_proj", "k_proj", "v_proj"), tensor.split(cls._qkv_sizes(config))):
                    out[f"{match['prefix']}.{part}.{match['kind']}"] = piece
            elif match := _FUSED_GATE_UP.match(name):
                gate, up = tensor.chunk(2, dim=0)
                out[f"{match['prefix']}.gate_proj.{match['kind']}"] = gate
                out[f"{match['prefix']}.up_proj.{match['kind']}"] = up
            else:
                out[name] = tensor
        return out

    @classmethod
    def checkpoint_weights(cls, config: ModelConfig, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Fuse q/k/v and gate/up back into the layout Phi-3 checkpoints use."""
        weights = dict(super().checkpoint_weights(config, weights))
        for name in [n for n in weights if n.endswith(".self_attn.q_proj.weight")]:
            prefix = name[: -len(".q_proj.weight")]
            parts = [weights.pop(f"{prefix}.{p}.weight") for p in ("q_proj", "k_proj", "v_proj")]
            weights[f"{prefix}.qkv_proj.weight"] = torch.cat(parts, dim=0)
        for name in [n for n in weights if n.endswith(".mlp.gate_proj.weight")]:
            prefix = name[: -len(".gate_proj.weight")]
            parts = [weights.pop(f"{prefix}.{p}.weight") for p in ("gate_proj", "up_proj")]
            weights[f"{prefix}.gate_up_proj.weight"] = torch.cat(parts, dim=0)
        return weights


def gguf_config(m: Metadata, tensors: dict, read) -> dict:
    config = decoder_config(m, tensors, "phi3", "Phi3ForCausalLM")
    config["head_dim"] = config["hidden_size"] // config["num_attention_heads"]
    rotary = m("rope.dimension_count")
    if rotary and rotary != config["head_dim"]:
        config["partial_rotary_factor"] = rotary / config["head_dim"]
    config["sliding_window"] = m("attention.sliding_window")
    if "rope_factors_long.weight" in tensors:  # LongRoPE: per-dimension factors stored as tensors
        original = m("rope.scaling.original_context_length", config["max_position_embeddings"])
        config["rope_scaling"] = {
            "rope_type": "longrope",
            "long_factor": read("rope_factors_long.weight").tolist(),
            "short_factor": read("rope_factors_short.weight").tolist(),
            "original_max_position_embeddings": int(original),
        }
        config["original_max_position_embeddings"] = int(original)
    return config


GGUF = ArchSpec("phi3", gguf_config,
                layer_names=DECODER_LAYER | {"attn_qkv": "self_attn.qkv_proj", "ffn_up": "mlp.gate_up_proj"})


FAMILY = Family("phi3", Phi3ForCausalLM, gguf=GGUF)
