"""The machinery for llama.cpp's GGUF conventions: metadata access, the llama-like decoder's config fields and
tensor names, and `ArchSpec`, which maps one GGUF architecture's tensors onto transformers' parameters.

Each family's own spec (its config function, its name overrides, its quirks) lives in its models/<family>.py as
`Family(..., gguf=ArchSpec(...))`; the caller hands the table of specs to `GGUFCheckpoint`, so this reader never
imports a model."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Mapping

import torch

from ..errors import UnsupportedArchitectureError

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
# routed experts, stacked per layer (llama.cpp's merged *_exps tensors), as transformers v5 keeps them
ROUTED_EXPERTS = {
    "ffn_gate_inp": "mlp.gate",
    "ffn_down_exps": "mlp.experts.down_proj",
    "ffn_gate_exps": "mlp.experts.gate_up_proj",
    "ffn_up_exps": "mlp.experts.gate_up_proj",
}
# transformers stores fused expert weights as bare parameters (no ".weight")
BARE_PARTS = {"ffn_down_exps", "ffn_gate_exps", "ffn_up_exps"}
# stacked expert tensors joined on dim 1: gate rows first, then up rows
FUSED_SLOTS = {"ffn_gate_exps": 0, "ffn_up_exps": 1}


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


def vocab_size(m: Metadata, tensors: dict) -> int:
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


def special_ids(metadata: dict) -> dict:
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
        "vocab_size": vocab_size(m, tensors),
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
        **special_ids(m.metadata),
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


def spec_for(architecture: str, specs: Mapping[str, ArchSpec]) -> ArchSpec:
    """The spec the caller's table gives for a file's `general.architecture`."""
    if architecture not in specs:
        raise UnsupportedArchitectureError(architecture, specs)
    return specs[architecture]
