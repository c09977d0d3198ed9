"""Each exportable family's GGUF hyperparameter keys, and what its reader (tokenmill's and llama.cpp's) cannot
express, refused before anything is written.

- llama / qwen2 / qwen3: llama.cpp's llama-like keys (sizes, heads, rope base and linear / yarn scaling).
- gemma3_text: the same sizes, the global layers' rope base, the sliding window and the final soft-cap, as
  llama.cpp's converter writes them. llama.cpp fixes the rest, so the config must agree with it: a global
  layer every sixth (five local layers, then one), local layers' rope base 10000 without scaling, queries
  scaled by head_dim^-0.5 (hidden / heads for the 62-layer 27B), GELU (tanh), no attention soft-cap, no biases.
The norm weights' (1 + w) storage is the tensor side (ArchSpec.norm_offset, applied by export_gguf.py).
"""

from __future__ import annotations

from ..layers.decoder import layer_types
from ..models.gemma import gemma_activation
from ..models.gemma2 import gguf_attention_scalar
from ..models.gemma3 import GGUF_LOCAL_ROPE_BASE, GGUF_SLIDING_PATTERN, per_layer_type_rope

ROPE_TYPES = (None, "default", "linear", "yarn")  # llama3's per-frequency divisors are not written yet
GEMMA3_ROPE_TYPES = (None, "default", "linear")


class ExportError(ValueError):
    """A model or request the GGUF export cannot honour, with what it can."""


def _add_sizes(writer, config, rope_theta: float) -> None:
    writer.add_context_length(int(config.max_position_embeddings))
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_key_length(config.head_dim)
    writer.add_value_length(config.head_dim)
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_vocab_size(config.vocab_size)
    writer.add_rope_freq_base(float(rope_theta))


def _add_rope_scaling(writer, rope: dict) -> None:
    if rope.get("rope_type") in ("linear", "yarn"):
        writer.add_rope_scaling_type(rope["rope_type"])
        writer.add_rope_scaling_factor(float(rope["factor"]))
        if rope.get("original_max_position_embeddings"):
            writer.add_rope_scaling_orig_ctx_len(int(rope["original_max_position_embeddings"]))


def check_llama_like(config) -> None:
    if config.hidden_act != "silu":
        raise ExportError(f"hidden_act {config.hidden_act!r}: llama.cpp's {config.model_type} runs SiLU only")
    rope_type = (config.rope_parameters or {}).get("rope_type")
    if rope_type not in ROPE_TYPES:
        raise ExportError(f"rope_type {rope_type!r} cannot be written yet; exportable: linear, yarn or none")


def add_llama_like(writer, config) -> None:
    rope = config.rope_parameters or {}
    _add_sizes(writer, config, rope.get("rope_theta", 10000.0))
    writer.add_rope_dimension_count(config.head_dim)
    _add_rope_scaling(writer, rope)


def _gemma3_refusals(config) -> list[str]:
    """What in a Gemma 3 config llama.cpp's gemma3 cannot express."""
    pattern = ["sliding_attention" if (i + 1) % GGUF_SLIDING_PATTERN else "full_attention"
               for i in range(config.num_hidden_layers)]
    rope = per_layer_type_rope(config)
    local, full = rope["sliding_attention"], rope["full_attention"]
    fields = {"num_hidden_layers": config.num_hidden_layers, "hidden_size": config.hidden_size,
              "num_attention_heads": config.num_attention_heads, "head_dim": config.head_dim}
    scalar = config.get("query_pre_attn_scalar") or config.head_dim
    checks = (
        (layer_types(config, GGUF_SLIDING_PATTERN) != pattern,
         f"layer_types must put a global layer every {GGUF_SLIDING_PATTERN}th (llama.cpp's fixed pattern)"),
        (local.get("rope_type") != "default" or float(local["rope_theta"]) != GGUF_LOCAL_ROPE_BASE,
         f"local layers' rope must be the default with base {GGUF_LOCAL_ROPE_BASE:g}, got {local}"),
        (full.get("rope_type") not in GEMMA3_ROPE_TYPES,
         f"global layers' rope_type {full.get('rope_type')!r}: exportable default or linear"),
        (float(scalar) != float(gguf_attention_scalar(fields)),
         f"query_pre_attn_scalar {scalar} differs from the {gguf_attention_scalar(fields)} llama.cpp uses"),
        (gemma_activation(config) != "gelu_pytorch_tanh",
         f"hidden_activation {gemma_activation(config)!r}: llama.cpp's gemma3 runs GELU (tanh) only"),
        (config.get("attn_logit_softcapping") is not None, "attn_logit_softcapping is not part of Gemma 3"),
        (bool(config.get("attention_bias")), "attention biases: llama.cpp's gemma3 has none"),
        (bool(config.get("use_bidirectional_attention")), "bidirectional attention (an embedding model)"),
    )
    return [message for failed, message in checks if failed]


def check_gemma3(config) -> None:
    refusals = _gemma3_refusals(config)
    if refusals:
        raise ExportError("this Gemma 3 config cannot be written as llama.cpp's gemma3: " + "; ".join(refusals))


def add_gemma3(writer, config) -> None:
    full = per_layer_type_rope(config)["full_attention"]
    _add_sizes(writer, config, full["rope_theta"])
    _add_rope_scaling(writer, full)
    if config.get("sliding_window"):
        writer.add_sliding_window(int(config.get("sliding_window")))
    if config.get("final_logit_softcapping"):
        writer.add_final_logit_softcapping(float(config.get("final_logit_softcapping")))


# model_type → (check, writer of the hyperparameter keys)
FAMILIES = {"llama": (check_llama_like, add_llama_like), "qwen2": (check_llama_like, add_llama_like),
            "qwen3": (check_llama_like, add_llama_like), "gemma3_text": (check_gemma3, add_gemma3)}
