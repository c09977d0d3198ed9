"""Per-architecture knowledge of llama.cpp's GGUF conventions: metadata -> HF config, tensor names -> HF
parameter names, and the value transforms llama.cpp's converter applied that have to be undone."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable

import torch

from ..errors import UnsupportedArchitectureError
from .gguf_rope import llama3_rope_parameters

GGUF_TENSOR_NAME = re.compile(r"^(?:blk\.(?P<layer>\d+)\.)?(?P<part>[a-z0-9_]+)\.(?P<kind>weight|bias)$")

DECODER_TOP = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
DECODER_LAYER = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
# Gemma 2/3 have four norms per layer; llama.cpp's ffn_norm is the one *before* the MLP there
GEMMA2_LAYER = DECODER_LAYER | {
    "ffn_norm": "pre_feedforward_layernorm",
    "post_attention_norm": "post_attention_layernorm",
    "post_ffw_norm": "post_feedforward_layernorm",
}
PHI3_LAYER = DECODER_LAYER | {"attn_qkv": "self_attn.qkv_proj", "ffn_up": "mlp.gate_up_proj"}
# routed experts, stacked per layer (llama.cpp's merged *_exps tensors), as transformers v5 keeps them
ROUTED_EXPERTS = {
    "ffn_gate_inp": "mlp.gate",
    "ffn_down_exps": "mlp.experts.down_proj",
    "ffn_gate_exps": "mlp.experts.gate_up_proj",
    "ffn_up_exps": "mlp.experts.gate_up_proj",
}
# llama.cpp writes Mixtral as "llama" with expert tensors; a dense Llama file simply has none of them
LLAMA_LAYER = DECODER_LAYER | ROUTED_EXPERTS
QWEN2MOE_LAYER = DECODER_LAYER | ROUTED_EXPERTS | {
    "ffn_gate_inp_shexp": "mlp.shared_expert_gate",
    "ffn_gate_shexp": "mlp.shared_expert.gate_proj",
    "ffn_up_shexp": "mlp.shared_expert.up_proj",
    "ffn_down_shexp": "mlp.shared_expert.down_proj",
}
# transformers stores fused expert weights as bare parameters (no ".weight")
BARE_PARTS = {"ffn_down_exps", "ffn_gate_exps", "ffn_up_exps"}
# stacked expert tensors joined on dim 1: gate rows first, then up rows
FUSED_SLOTS = {"ffn_gate_exps": 0, "ffn_up_exps": 1}
GPT2_TOP = {"token_embd": "transformer.wte", "position_embd": "transformer.wpe",
            "output_norm": "transformer.ln_f", "output": "lm_head"}
GPT2_LAYER = {"attn_norm": "ln_1", "attn_qkv": "attn.c_attn", "attn_output": "attn.c_proj",
              "ffn_norm": "ln_2", "ffn_up": "mlp.c_fc", "ffn_down": "mlp.c_proj"}
# GPT-2's Conv1D keeps weights as (in, out); llama.cpp transposed them to (out, in)
GPT2_TRANSPOSED = {"attn_qkv", "attn_output", "ffn_up", "ffn_down"}


class Metadata:
    """`m("block_count")` reads `<arch>.block_count`; a per-layer list is reduced to its largest value."""

    def __init__(self, metadata: dict, prefix: str):
        self.metadata = metadata
        self.prefix = prefix

    def __call__(self, key: str, default=None):
        value = self.metadata.get(f"{self.prefix}.{key}", default)
        return max(value) if isinstance(value, list) and value else value

    def has(self, key: str) -> bool:
        return f"{self.prefix}.{key}" in self.metadata


def _vocab_size(m: Metadata, tensors: dict) -> int:
    if m.has("vocab_size"):
        return int(m("vocab_size"))
    tokens = m.metadata.get("tokenizer.ggml.tokens")
    if tokens:
        return len(tokens)
    return int(tensors["token_embd.weight"].shape[0])


def _rope_scaling(m: Metadata) -> dict | None:
    kind = m("rope.scaling.type")
    factor = m("rope.scaling.factor")
    if kind in (None, "none") or not factor:
        return None
    scaling = {"rope_type": kind, "factor": float(factor)}
    if m.has("rope.scaling.original_context_length"):
        scaling["original_max_position_embeddings"] = int(m("rope.scaling.original_context_length"))
    if kind == "yarn":
        for gguf_key, hf_key in (("attn_factor", "attention_factor"), ("yarn_beta_fast", "beta_fast"),
                                 ("yarn_beta_slow", "beta_slow")):
            if m.has(f"rope.scaling.{gguf_key}"):
                scaling[hf_key] = float(m(f"rope.scaling.{gguf_key}"))
    return scaling


def _special_ids(metadata: dict) -> dict:
    return {
        "bos_token_id": metadata.get("tokenizer.ggml.bos_token_id"),
        "eos_token_id": metadata.get("tokenizer.ggml.eos_token_id"),
        "pad_token_id": metadata.get("tokenizer.ggml.padding_token_id"),
        "unk_token_id": metadata.get("tokenizer.ggml.unknown_token_id"),
    }


def decoder_config(m: Metadata, tensors: dict, model_type: str, class_name: str) -> dict:
    """The fields every llama-like decoder shares."""
    heads = int(m("attention.head_count"))
    hidden = int(m("embedding_length"))
    head_dim = m("attention.key_length") or hidden // heads
    return {
        "model_type": model_type,
        "architectures": [class_name],
        "vocab_size": _vocab_size(m, tensors),
        "hidden_size": hidden,
        "intermediate_size": m("feed_forward_length"),
        "num_hidden_layers": int(m("block_count")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(m("attention.head_count_kv", heads)),
        "head_dim": int(head_dim),
        "max_position_embeddings": m("context_length", 2048),
        "rms_norm_eps": float(m("attention.layer_norm_rms_epsilon", 1e-6)),
        "rope_theta": float(m("rope.freq_base", 10000.0)),
        "rope_scaling": _rope_scaling(m),
        "hidden_act": "silu",
        "tie_word_embeddings": "output.weight" not in tensors,
        "attention_bias": "blk.0.attn_q.bias" in tensors,
        "mlp_bias": "blk.0.ffn_up.bias" in tensors,
        **_special_ids(m.metadata),
    }


def llama_config(m: Metadata, tensors: dict, read) -> dict:
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




def qwen2_config(m, tensors, read) -> dict:
    return decoder_config(m, tensors, "qwen2", "Qwen2ForCausalLM")


def qwen3_config(m, tensors, read) -> dict:
    return decoder_config(m, tensors, "qwen3", "Qwen3ForCausalLM")


def qwen2moe_config(m, tensors, read) -> dict:
    config = decoder_config(m, tensors, "qwen2_moe", "Qwen2MoeForCausalLM")
    config.update(
        num_experts=int(m("expert_count")),
        num_experts_per_tok=int(m("expert_used_count")),
        moe_intermediate_size=int(m("expert_feed_forward_length", tensors["blk.0.ffn_gate_exps.weight"].shape[1])),
        shared_expert_intermediate_size=int(m(
            "expert_shared_feed_forward_length", tensors["blk.0.ffn_gate_shexp.weight"].shape[0])),
        decoder_sparse_step=1,
        mlp_only_layers=[],
        norm_topk_prob=False,
    )
    if config["intermediate_size"] is None:
        config["intermediate_size"] = config["moe_intermediate_size"]
    return config


def _attention_scalar(m: Metadata, config: dict) -> float:
    """llama.cpp scales Gemma 2/3 queries by head_dim, except the 27B model (62 layers): hidden / heads."""
    if config["num_hidden_layers"] == 62:
        return config["hidden_size"] // config["num_attention_heads"]
    return config["head_dim"]


def gemma_config(m, tensors, read) -> dict:
    config = decoder_config(m, tensors, "gemma", "GemmaForCausalLM")
    config.update(hidden_act="gelu_pytorch_tanh", hidden_activation="gelu_pytorch_tanh")
    return config


def gemma2_config(m, tensors, read) -> dict:
    config = decoder_config(m, tensors, "gemma2", "Gemma2ForCausalLM")
    layers = config["num_hidden_layers"]
    config.update(
        hidden_act="gelu_pytorch_tanh",
        hidden_activation="gelu_pytorch_tanh",
        query_pre_attn_scalar=_attention_scalar(m, config),
        sliding_window=m("attention.sliding_window", 4096),
        attn_logit_softcapping=m("attn_logit_softcapping", 50.0),
        final_logit_softcapping=m("final_logit_softcapping", 30.0),
        # even-numbered layers (0, 2, ...) use the sliding window
        layer_types=["sliding_attention" if (i + 1) % 2 else "full_attention" for i in range(layers)],
    )
    return config


GEMMA3_SLIDING_PATTERN = 6  # llama.cpp hard-codes it: five local layers, then one global
GEMMA3_LOCAL_ROPE_BASE = 10000.0  # likewise not in the file


def gemma3_config(m, tensors, read) -> dict:
    config = decoder_config(m, tensors, "gemma3_text", "Gemma3ForCausalLM")
    layers = config["num_hidden_layers"]
    config.update(
        hidden_act="gelu_pytorch_tanh",
        hidden_activation="gelu_pytorch_tanh",
        query_pre_attn_scalar=_attention_scalar(m, config),
        sliding_window=m("attention.sliding_window", 4096),
        sliding_window_pattern=GEMMA3_SLIDING_PATTERN,
        layer_types=["sliding_attention" if (i + 1) % GEMMA3_SLIDING_PATTERN else "full_attention"
                     for i in range(layers)],
        rope_local_base_freq=GEMMA3_LOCAL_ROPE_BASE,
        attn_logit_softcapping=m("attn_logit_softcapping"),
        final_logit_softcapping=m("final_logit_softcapping"),
        use_bidirectional_attention=False,
    )
    return config


def phi3_config(m, tensors, read) -> dict:
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


def gpt2_config(m, tensors, read) -> dict:
    hidden, layers, heads = int(m("embedding_length")), int(m("block_count")), int(m("attention.head_count"))
    positions = int(m("context_length", tensors["position_embd.weight"].shape[0]))
    inner = m("feed_forward_length")
    eps = float(m("attention.layer_norm_epsilon", 1e-5))
    return {
        "model_type": "gpt2",
        "architectures": ["GPT2LMHeadModel"],
        "vocab_size": _vocab_size(m, tensors),
        "n_embd": hidden, "n_layer": layers, "n_head": heads, "n_positions": positions, "n_ctx": positions,
        "n_inner": inner if inner and inner != 4 * hidden else None, "layer_norm_epsilon": eps, "activation_function": "gelu_new",
        # the same values under the generic names the rest of tokenmill reads
        "hidden_size": hidden, "num_hidden_layers": layers, "num_attention_heads": heads,
        "num_key_value_heads": heads, "head_dim": hidden // heads, "intermediate_size": inner or 4 * hidden,
        "max_position_embeddings": positions, "hidden_act": "gelu_new",
        "tie_word_embeddings": "output.weight" not in tensors,
        **_special_ids(m.metadata),
    }


@dataclass
class ArchSpec:
    """How one GGUF architecture maps onto its transformers counterpart."""

    name: str
    build_config: Callable
    top_names: dict = field(default_factory=lambda: DECODER_TOP)
    layer_names: dict = field(default_factory=lambda: DECODER_LAYER)
    layer_prefix: str = "model.layers"
    permute_qk: bool = False  # llama.cpp interleaves the rotary halves of Q and K rows for llama
    norm_offset: bool = False  # llama.cpp stores Gemma's (1 + w) norms as w + 1
    transposed: frozenset = frozenset()

    def config(self, metadata: dict, tensors: dict, read=None) -> dict:
        return self.build_config(Metadata(metadata, self.name), tensors, read)

    def hf_name(self, gguf_name: str) -> str | None:
        """The transformers parameter a GGUF tensor becomes, or None if it has no counterpart."""
        match = GGUF_TENSOR_NAME.match(gguf_name)
        if match is None:
            return None
        part, kind, layer = match["part"], match["kind"], match["layer"]
        suffix = "" if part in BARE_PARTS else f".{kind}"
        if layer is None:
            base = self.top_names.get(part)
            return base + suffix if base else None
        base = self.layer_names.get(part)
        return f"{self.layer_prefix}.{layer}.{base}{suffix}" if base else None

    def parameter_names(self, tensors: dict, metadata: dict) -> list[tuple[str, str]]:
        pairs = [(name, self.hf_name(name)) for name in tensors]
        return [(gguf_name, hf_name) for gguf_name, hf_name in pairs if hf_name is not None]

    def needs_fixup(self, gguf_name: str) -> bool:
        return self.norm_offset and gguf_name.endswith("norm.weight")

    def keeps_rows(self, gguf_name: str) -> bool:
        """Whether the checkpoint's rows are the module's rows (no transpose, no stacking into experts)."""
        part = GGUF_TENSOR_NAME.match(gguf_name)["part"]
        return part not in self.transposed and part not in FUSED_SLOTS

    def fixup(self, gguf_name: str, tensor: torch.Tensor, config: dict) -> torch.Tensor:
        """Undo llama.cpp's value/layout changes on one tensor."""
        part = GGUF_TENSOR_NAME.match(gguf_name)["part"]
        if self.needs_fixup(gguf_name):
            return tensor - 1.0
        if self.permute_qk and part in ("attn_q", "attn_k"):
            heads = config["num_attention_heads"] if part == "attn_q" else config["num_key_value_heads"]
            return unpermute_rotary_rows(tensor, heads)
        if part in self.transposed and gguf_name.endswith(".weight"):
            return tensor.t().contiguous()
        if part == "ffn_gate_inp_shexp" and tensor.dim() == 1:
            return tensor.unsqueeze(0)
        return tensor

    def store(self, weights: dict, gguf_name: str, hf_name: str, tensor: torch.Tensor) -> None:
        slot = FUSED_SLOTS.get(GGUF_TENSOR_NAME.match(gguf_name)["part"])
        if slot is None:
            weights[hf_name] = tensor
            return
        rows = tensor.shape[1]
        if hf_name not in weights:
            weights[hf_name] = tensor.new_empty(tensor.shape[0], 2 * rows, *tensor.shape[2:])
        weights[hf_name][:, slot * rows:(slot + 1) * rows] = tensor


def unpermute_rotary_rows(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """Inverse of llama.cpp's `permute`: per head, rows were reordered from (2, dim/2) to (dim/2, 2)."""
    rows = weight.shape[0]
    order = torch.arange(rows).view(heads, rows // heads // 2, 2).transpose(1, 2).reshape(-1)
    return weight.index_select(0, order)  # whole-row copies: 2x a strided reshape, and the same for block bytes


ARCHITECTURES = {
    "llama": ArchSpec("llama", llama_config, layer_names=LLAMA_LAYER, permute_qk=True),
    "qwen2": ArchSpec("qwen2", qwen2_config),
    "qwen3": ArchSpec("qwen3", qwen3_config),
    "qwen2moe": ArchSpec("qwen2moe", qwen2moe_config, layer_names=QWEN2MOE_LAYER),
    "gemma": ArchSpec("gemma", gemma_config, norm_offset=True),
    "gemma2": ArchSpec("gemma2", gemma2_config, layer_names=GEMMA2_LAYER, norm_offset=True),
    "gemma3": ArchSpec("gemma3", gemma3_config, layer_names=GEMMA2_LAYER, norm_offset=True),
    "phi3": ArchSpec("phi3", phi3_config, layer_names=PHI3_LAYER),
    "gpt2": ArchSpec("gpt2", gpt2_config, top_names=GPT2_TOP, layer_names=GPT2_LAYER,
                     layer_prefix="transformer.h", transposed=frozenset(GPT2_TRANSPOSED)),
}


def for_architecture(name: str) -> ArchSpec:
    if name not in ARCHITECTURES:
        raise UnsupportedArchitectureError(name, ARCHITECTURES)
    return ARCHITECTURES[name]
