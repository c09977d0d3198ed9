"""A GGUF's size metadata checked against sane bounds and against its own tensors, before a config is derived.

The errors name the GGUF key (`llama.block_count`), so a bad file points at the field to fix; the derived
Hugging Face config then gets the same bounds as a config.json (`config_limits`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ..config_limits import (MAX_EXPERTS, MAX_HEAD_DIM, MAX_HEADS, MAX_HIDDEN, MAX_INTERMEDIATE, MAX_LAYERS,
                             MAX_POSITIONS, MAX_VOCAB, check_config_values, check_layer_count)
from ..errors import CheckpointError

# <arch>.<key> -> (smallest, largest); a per-layer list holds one such value per layer
SIZE_KEYS = {
    "block_count": (1, MAX_LAYERS),
    "embedding_length": (1, MAX_HIDDEN),
    "feed_forward_length": (0, MAX_INTERMEDIATE),
    "attention.head_count": (1, MAX_HEADS),
    "attention.head_count_kv": (1, MAX_HEADS),
    "attention.key_length": (1, MAX_HEAD_DIM),
    "attention.value_length": (1, MAX_HEAD_DIM),
    "rope.dimension_count": (0, MAX_HEAD_DIM),
    "context_length": (1, MAX_POSITIONS),
    "vocab_size": (1, MAX_VOCAB),
    "expert_count": (0, MAX_EXPERTS),
    "expert_used_count": (0, MAX_EXPERTS),
    "expert_feed_forward_length": (0, MAX_INTERMEDIATE),
    "expert_shared_feed_forward_length": (0, MAX_INTERMEDIATE),
    "attention.sliding_window": (0, MAX_POSITIONS),
    "rope.scaling.original_context_length": (0, MAX_POSITIONS),
}
# <arch>.<key> -> largest; each must be a finite number >= 0 (0 means "not set" for the optional ones)
FLOAT_KEYS = {
    "rope.freq_base": 1e30, "rope.scaling.factor": 1e6, "attention.layer_norm_rms_epsilon": 1.0,
    "attention.layer_norm_epsilon": 1.0, "attn_logit_softcapping": 1e30, "final_logit_softcapping": 1e30,
    "rope.scaling.attn_factor": 1e6, "rope.scaling.yarn_beta_fast": 1e6, "rope.scaling.yarn_beta_slow": 1e6,
}
# the Hugging Face field each GGUF key becomes, to name the key when the derived config is refused
HF_FIELD_KEYS = {
    "vocab_size": "vocab_size", "hidden_size": "embedding_length", "n_embd": "embedding_length",
    "num_hidden_layers": "block_count", "n_layer": "block_count",
    "num_attention_heads": "attention.head_count", "n_head": "attention.head_count",
    "num_key_value_heads": "attention.head_count_kv", "head_dim": "attention.key_length",
    "intermediate_size": "feed_forward_length", "max_position_embeddings": "context_length",
    "num_experts": "expert_count", "num_local_experts": "expert_count", "num_experts_per_tok": "expert_used_count",
    "moe_intermediate_size": "expert_feed_forward_length", "sliding_window": "attention.sliding_window",
    "rms_norm_eps": "attention.layer_norm_rms_epsilon", "rope_theta": "rope.freq_base",
}
TOKEN_ARRAYS = ("tokenizer.ggml.tokens", "tokenizer.ggml.scores", "tokenizer.ggml.token_type")


def check_metadata(path: Path, metadata: dict, architecture: str) -> None:
    """The size keys a family's config reads: whole numbers (or per-layer lists of them) within bounds."""
    for key, (low, high) in SIZE_KEYS.items():
        full_key = f"{architecture}.{key}"
        for value in _values(metadata.get(full_key)):
            if not isinstance(value, int) or isinstance(value, bool):
                raise CheckpointError(path, f"{full_key} = {value!r}: must be a whole number")
            if not low <= value <= high:
                raise CheckpointError(path, f"{full_key} = {value}: out of range (allowed {low}..{high})")
    for key, high in FLOAT_KEYS.items():
        full_key = f"{architecture}.{key}"
        for value in _values(metadata.get(full_key)):
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) \
                    or not 0 <= value <= high:
                raise CheckpointError(path, f"{full_key} = {value!r}: must be a finite number in 0..{high:g}")
    _check_per_layer_lengths(path, metadata, architecture)


def check_config(path: Path, config: dict, tensors: dict, architecture: str) -> None:
    """The derived Hugging Face config: the shared bounds, and its layers and width against the tensors."""
    spelled = {field: f"{architecture}.{key}" for field, key in HF_FIELD_KEYS.items()}
    check_config_values(path, config, spelled)
    check_layer_count(path, config["num_hidden_layers"], tensors, field=f"{architecture}.block_count")
    embedding = tensors.get("token_embd.weight")
    if embedding is not None and len(embedding.shape) == 2 and embedding.shape[1] != config["hidden_size"]:
        raise CheckpointError(path, f"{architecture}.embedding_length = {config['hidden_size']} but tensor "
                                    f"'token_embd.weight' has shape {embedding.shape}")


def _values(value: Any) -> list:
    return value if isinstance(value, list) else [] if value is None else [value]


def _check_per_layer_lengths(path: Path, metadata: dict, architecture: str) -> None:
    layers = metadata.get(f"{architecture}.block_count")
    for key in SIZE_KEYS:
        value = metadata.get(f"{architecture}.{key}")
        if isinstance(value, list) and len(value) != layers:
            raise CheckpointError(path, f"{architecture}.{key}: a per-layer list of {len(value)} values for "
                                        f"{layers} layers")


def check_token_metadata(path: Path, metadata: dict) -> None:
    """The vocabulary's parallel arrays: strings, numbers, one entry per token, a vocabulary of sane size."""
    tokens = metadata.get(TOKEN_ARRAYS[0])
    if tokens is None:
        return
    if not isinstance(tokens, list) or not all(isinstance(token, str) for token in tokens):
        raise CheckpointError(path, f"{TOKEN_ARRAYS[0]} must be an array of strings")
    if len(tokens) > MAX_VOCAB:
        raise CheckpointError(path, f"{TOKEN_ARRAYS[0]}: {len(tokens)} tokens (at most {MAX_VOCAB})")
    for key in TOKEN_ARRAYS[1:]:
        values = metadata.get(key)
        if values is None:
            continue
        if not isinstance(values, list) or len(values) != len(tokens):
            count = len(values) if isinstance(values, list) else "not an array"
            raise CheckpointError(path, f"{key}: {count} entries for {len(tokens)} tokens")
        if not all(isinstance(value, (int, float)) and not isinstance(value, bool) for value in values):
            raise CheckpointError(path, f"{key} must be an array of numbers")
    merges = metadata.get("tokenizer.ggml.merges")
    if merges is not None and not (isinstance(merges, list) and all(isinstance(merge, str) for merge in merges)):
        raise CheckpointError(path, "tokenizer.ggml.merges must be an array of strings")
    for key in ("bos_token_id", "eos_token_id", "unknown_token_id", "padding_token_id"):
        token_id = metadata.get(f"tokenizer.ggml.{key}")
        if token_id is None:
            continue
        # BOS and EOS are looked up in the vocabulary; the others are skipped when out of range
        in_range = key not in ("bos_token_id", "eos_token_id") or 0 <= token_id < len(tokens)
        if not isinstance(token_id, int) or isinstance(token_id, bool) or not in_range:
            raise CheckpointError(path, f"tokenizer.ggml.{key} = {token_id!r}: not a token id "
                                        f"(the vocabulary has {len(tokens)} tokens)")
