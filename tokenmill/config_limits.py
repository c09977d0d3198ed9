"""Sane bounds on a model config's sizes, checked before anything is built from them.

A config is untrusted input: a layer count of 2^31 or a head count of 0 must be refused with the file and the
field named, not met with a MemoryError, a ZeroDivisionError or a hang. The bounds are far above every real
model (largest today: ~130 layers, hidden 25k, vocabulary 260k, 10M positions) and far below what would
exhaust memory when the model is laid out.
"""

from __future__ import annotations

import math
import re
from typing import Any, Iterable

from .errors import CheckpointError

MAX_LAYERS = 1024
MAX_HIDDEN = 1 << 17
MAX_INTERMEDIATE = 1 << 20
MAX_HEADS = 2048
MAX_HEAD_DIM = 4096
MAX_VOCAB = 1 << 24
MAX_POSITIONS = 1 << 26
MAX_EXPERTS = 4096

# field -> (smallest, largest) for whole-number sizes; transformers' GPT-2 spellings included
SIZE_BOUNDS = {
    "vocab_size": (1, MAX_VOCAB),
    "hidden_size": (1, MAX_HIDDEN), "n_embd": (1, MAX_HIDDEN),
    "num_hidden_layers": (1, MAX_LAYERS), "n_layer": (1, MAX_LAYERS),
    "num_attention_heads": (1, MAX_HEADS), "n_head": (1, MAX_HEADS),
    "num_key_value_heads": (1, MAX_HEADS),
    "head_dim": (1, MAX_HEAD_DIM),
    "intermediate_size": (0, MAX_INTERMEDIATE), "n_inner": (1, MAX_INTERMEDIATE),
    "moe_intermediate_size": (1, MAX_INTERMEDIATE),
    "shared_expert_intermediate_size": (0, MAX_INTERMEDIATE),
    "num_experts": (1, MAX_EXPERTS), "num_local_experts": (1, MAX_EXPERTS),
    "num_experts_per_tok": (1, MAX_EXPERTS),
}
# sizes every decoder needs, with their GPT-2 spelling
REQUIRED_SIZES = {"vocab_size": "vocab_size", "hidden_size": "n_embd", "num_hidden_layers": "n_layer",
                  "num_attention_heads": "n_head"}
# positions may be written as 4096.0 by some converters; they only bound indices, never shapes
POSITION_BOUNDS = {
    "max_position_embeddings": (1, MAX_POSITIONS), "n_positions": (1, MAX_POSITIONS), "n_ctx": (1, MAX_POSITIONS),
    "sliding_window": (0, MAX_POSITIONS),  # 0: no window (Qwen2 writes it so) "original_max_position_embeddings": (1, MAX_POSITIONS),
}
# field -> (exclusive lower bound, inclusive upper bound) for finite floats
FLOAT_BOUNDS = {
    "rms_norm_eps": (-1e-300, 1.0), "layer_norm_eps": (-1e-300, 1.0), "layer_norm_epsilon": (-1e-300, 1.0),
    "rope_theta": (0.0, 1e30), "rope_local_base_freq": (0.0, 1e30),
    "partial_rotary_factor": (0.0, 1.0),
    "final_logit_softcapping": (0.0, 1e30), "attn_logit_softcapping": (0.0, 1e30),
    "query_pre_attn_scalar": (0.0, 1e30),
}
ROPE_FLOAT_BOUNDS = {"rope_theta": (0.0, 1e30), "factor": (0.0, 1e6), "attention_factor": (0.0, 1e6),
                     "beta_fast": (0.0, 1e6), "beta_slow": (0.0, 1e6), "low_freq_factor": (0.0, 1e6),
                     "high_freq_factor": (0.0, 1e6)}
LAYER_INDEX = re.compile(r"(?:^|\.)(?:layers|h|blk)\.(\d+)\.")


def check_config_values(path, config: dict[str, Any], spelled: dict[str, str] | None = None) -> None:
    """Refuse a config whose sizes are absent-minded or absurd; `spelled` maps a field to how the file names it
    (a GGUF key) so the error points into the file."""
    def name(field: str) -> str:
        return (spelled or {}).get(field, field)

    for field, alias in REQUIRED_SIZES.items():
        if config.get(field) is None and config.get(alias) is None:
            raise CheckpointError(path, f"{name(field)} is missing")
    if "intermediate_size" in config and config["intermediate_size"] is None and config.get("n_inner") is None \
            and config.get("model_type") != "gpt2":
        raise CheckpointError(path, f"{name('intermediate_size')} is missing")
    for field, (low, high) in SIZE_BOUNDS.items():
        _check_int(path, name(field), config.get(field), low, high, integral_floats=False)
    for field, (low, high) in POSITION_BOUNDS.items():
        _check_int(path, name(field), config.get(field), low, high, integral_floats=True)
    for field, (low, high) in FLOAT_BOUNDS.items():
        _check_float(path, name(field), config.get(field), low, high)
    _check_rope(path, config)
    heads, kv_heads = config.get("num_attention_heads"), config.get("num_key_value_heads")
    if isinstance(heads, int) and isinstance(kv_heads, int) and heads % kv_heads:
        raise CheckpointError(path, f"{name('num_attention_heads')} = {heads} is not a multiple of "
                                    f"{name('num_key_value_heads')} = {kv_heads}")
    experts, used = config.get("num_experts") or config.get("num_local_experts"), config.get("num_experts_per_tok")
    if isinstance(experts, int) and isinstance(used, int) and used > experts:
        raise CheckpointError(path, f"{name('num_experts_per_tok')} = {used} is more than the {experts} experts")


def check_layer_count(path, layers: int, parameter_names: Iterable[str], field: str = "num_hidden_layers") -> None:
    """The config's layer count against the layers the weights hold (0..n-1, each present), before building."""
    indices = {int(match[1]) for name in parameter_names if (match := LAYER_INDEX.search(name))}
    if not indices:
        return  # a naming this check does not know: the strict name check after building reports it
    if indices != set(range(layers)):
        present = f"layers 0..{max(indices)}" if indices == set(range(max(indices) + 1)) else \
            f"{len(indices)} layers with indices up to {max(indices)}"
        raise CheckpointError(path, f"{field} = {layers} but the weights hold {present}")


def _check_int(path, field: str, value: Any, low: int, high: int, integral_floats: bool) -> None:
    if value is None:
        return
    if integral_floats and isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise CheckpointError(path, f"{field} = {value!r}: must be a whole number")
    if not low <= value <= high:
        raise CheckpointError(path, f"{field} = {value}: out of range (allowed {low}..{high})")


def _check_float(path, field: str, value: Any, low: float, high: float) -> None:
    if value is None:
        return
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise CheckpointError(path, f"{field} = {value!r}: must be a number")
    if not (math.isfinite(value) and low < value <= high):
        raise CheckpointError(path, f"{field} = {value!r}: out of range (allowed above {max(low, 0):g} "
                                    f"up to {high:g}, finite)")


def _check_rope(path, config: dict) -> None:
    """rope_scaling / rope_parameters (one dict, or one per layer type as Gemma 3 writes them)."""
    for key in ("rope_scaling", "rope_parameters"):
        section = config.get(key)
        if section is None:
            continue
        if not isinstance(section, dict):
            raise CheckpointError(path, f"{key} = {section!r}: must be an object")
        nested = [(f"{key}.{kind}", part) for kind, part in section.items() if isinstance(part, dict)]
        for label, part in nested or [(key, section)]:
            for field, (low, high) in ROPE_FLOAT_BOUNDS.items():
                _check_float(path, f"{label}.{field}", part.get(field), low, high)
            _check_int(path, f"{label}.original_max_position_embeddings", part.get("original_max_position_embeddings"),
                       1, MAX_POSITIONS, integral_floats=True)
