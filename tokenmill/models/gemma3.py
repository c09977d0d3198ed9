"""Gemma 3 (text): Gemma 2's layer with q/k RMSNorm, five local layers to one global, and a separate RoPE
base (and scaling) for local and global layers."""

from __future__ import annotations

from ..config import ModelConfig
from ..layers.attention import Attention
from ..layers.decoder import layer_types, layer_windows
from ..layers.rope import RotaryEmbedding
from ..loading.gguf_arch import ArchSpec, Metadata, decoder_config
from .base import CausalLM
from .family import Family
from .gemma2 import GGUF_LAYER, gemma_norm, gemma_scaling, gguf_attention_scalar, sandwich_block

DEFAULT_THETA = {"full_attention": 1_000_000.0, "sliding_attention": 10_000.0}


def per_layer_type_rope(config: ModelConfig) -> dict[str, dict]:
    """transformers v5's {"full_attention": {...}, "sliding_attention": {...}}, also from the older flat
    spelling (rope_theta + rope_scaling for global layers, rope_local_base_freq for local ones)."""
    params = config.rope_parameters or {}
    if all(isinstance(params.get(kind), dict) for kind in DEFAULT_THETA):
        out = {kind: dict(params[kind]) for kind in DEFAULT_THETA}
    else:
        local = {"rope_type": "default", "rope_theta": float(config.get("rope_local_base_freq") or 10_000.0)}
        out = {"full_attention": dict(params), "sliding_attention": local}
    for kind, theta in DEFAULT_THETA.items():
        out[kind].setdefault("rope_type", "default")
        out[kind].setdefault("rope_theta", theta)
    return out


class Gemma3ForCausalLM(CausalLM):
    def __init__(self, config: ModelConfig, attn_implementation: str = "sdpa"):
        super().__init__(config)
        if config.get("use_bidirectional_attention"):
            raise ValueError("Gemma 3 with use_bidirectional_attention (an embedding model) is not a causal LM")
        config.rope_parameters = per_layer_type_rope(config)  # saved back in transformers v5's spelling
        self.final_logit_softcap = config.get("final_logit_softcapping")
        pattern = config.get("sliding_window_pattern") or config.get("_sliding_window_pattern") or 6
        kinds, windows = layer_types(config, pattern), layer_windows(config, pattern)
        layers = [self.block(config, i, windows[i], kinds[i], attn_implementation)
                  for i in range(config.num_hidden_layers)]
        rotaries = {kind: RotaryEmbedding(config.head_dim, params, config.max_position_embeddings)
                    for kind, params in config.rope_parameters.items()}
        self.assemble(layers, gemma_norm(config), rotaries, embed_scale=config.hidden_size**0.5)

    @staticmethod
    def block(config: ModelConfig, layer_idx: int, window: int | None, layer_type: str, attn_implementation: str):
        attention = Attention(
            config.hidden_size, config.num_attention_heads, config.num_key_value_heads, config.head_dim, layer_idx,
            qkv_bias=config.attention_bias, out_bias=config.attention_bias, scaling=gemma_scaling(config),
            softcap=config.get("attn_logit_softcapping"), sliding_window=window,
            qk_norm_eps=config.rms_norm_eps, qk_norm_unit_offset=True, attn_implementation=attn_implementation,
        )
        return sandwich_block(attention, config, window, rope_key=layer_type)

    @classmethod
    def checkpoint_config(cls, config_dict: dict) -> dict:
        config_dict = dict(config_dict)
        config_dict.pop("rope_local_base_freq", None)  # now inside rope_parameters["sliding_attention"]
        return config_dict


GGUF_SLIDING_PATTERN = 6  # llama.cpp hard-codes it: five local layers, then one global
GGUF_LOCAL_ROPE_BASE = 10000.0  # likewise not in the file


def gguf_config(m: Metadata, tensors: dict, read) -> dict:
    config = decoder_config(m, tensors, "gemma3_text", "Gemma3ForCausalLM")
    layers = config["num_hidden_layers"]
    config.update(
        hidden_act="gelu_pytorch_tanh",
        hidden_activation="gelu_pytorch_tanh",
        query_pre_attn_scalar=gguf_attention_scalar(config),
        sliding_window=m("attention.sliding_window", 4096),
        sliding_window_pattern=GGUF_SLIDING_PATTERN,
        layer_types=["sliding_attention" if (i + 1) % GGUF_SLIDING_PATTERN else "full_attention"
                     for i in range(layers)],
        rope_local_base_freq=GGUF_LOCAL_ROPE_BASE,
        attn_logit_softcapping=m("attn_logit_softcapping"),
        final_logit_softcapping=m("final_logit_softcapping"),
        use_bidirectional_attention=False,
    )
    return config


GGUF = ArchSpec("gemma3", gguf_config, layer_names=GGUF_LAYER, norm_offset=True)


FAMILY = Family("gemma3_text", Gemma3ForCausalLM, gguf=GGUF)
