"""Llama 2/3/3.x, SmolLM2, TinyLlama: pre-norm RMSNorm, grouped-query attention, RoPE (with its scalings), SwiGLU.

The reference shape that RMSPreNormLM implements; Llama itself differs in nothing but having no window.
"""

from __future__ import annotations

from ..config import ModelConfig
from ..loading.gguf_arch import DECODER_LAYER, ROUTED_EXPERTS, ArchSpec, Metadata, decoder_config
from ..loading.gguf_rope import llama3_rope_parameters
from .family import Family, RMSPreNormLM


class LlamaForCausalLM(RMSPreNormLM):
    @staticmethod
    def layer_windows(config: ModelConfig) -> list[int | None]:
        return [None] * config.num_hidden_layers


def gguf_config(m: Metadata, tensors: dict, read) -> dict:
    """llama.cpp writes Llama, Mistral and Mixtral all as "llama": expert tensors make it a Mixtral config."""
    experts = int(m("expert_count", 0) or 0)
    if experts:
        config = decoder_config(m, tensors, "mixtral", "MixtralForCausalLM")
        config.update(num_local_experts=experts, num_experts_per_tok=int(m("expert_used_count")),
                      sliding_window=None, router_jitter_noise=0.0)  # llama.cpp runs Mixtral without a window
        if config["intermediate_size"] is None:
            config["intermediate_size"] = int(tensors["blk.0.ffn_gate_exps.weight"].shape[1])
    else:  # Llama, and Mistral, which llama.cpp also writes (and runs) as plain llama
        config = decoder_config(m, tensors, "llama", "LlamaForCausalLM")
    rotary = m("rope.dimension_count")
    if not m.has("attention.key_length") and rotary:
        config["head_dim"] = int(rotary)
    if config["rope_scaling"] is None and "rope_freqs.weight" in tensors and read is not None:
        # Llama 3.x files keep only the resulting per-frequency divisors; recover the parameters
        divisors = read("rope_freqs.weight").double()
        config["rope_scaling"] = llama3_rope_parameters(divisors, config["rope_theta"], int(rotary or config["head_dim"]))
    return config


# a dense Llama file simply has none of the expert tensors
GGUF = ArchSpec("llama", gguf_config, layer_names=DECODER_LAYER | ROUTED_EXPERTS, permute_qk=True)


FAMILY = Family("llama", LlamaForCausalLM, gguf=GGUF)
