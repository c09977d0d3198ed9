"""ModelConfig: one object built from a Hugging Face config.json dict (or a GGUF's metadata mapped to one)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config_limits import check_config_values
from .errors import CheckpointError


# GPT-2-style config keys → the field names tokenmill reads (transformers' attribute_map)
FIELD_ALIASES = {"n_embd": "hidden_size", "n_layer": "num_hidden_layers", "n_head": "num_attention_heads",
                 "n_positions": "max_position_embeddings", "n_inner": "intermediate_size"}


@dataclass
class ModelConfig:
    """Declared fields use transformers' names; every other key of the source dict is kept in `extra`."""

    model_type: str
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int = 0
    num_key_value_heads: int | None = None
    head_dim: int | None = None
    max_position_embeddings: int = 2048
    rms_norm_eps: float = 1e-6
    hidden_act: str = "silu"
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    mlp_bias: bool = False
    # {"rope_type": "default"|"linear"|"dynamic"|"llama3"|..., "rope_theta": float, ...}
    rope_parameters: dict[str, Any] = field(default_factory=dict)
    bos_token_id: int | list[int] | None = None
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None
    torch_dtype: str | None = None
    architectures: list[str] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads ({self.num_attention_heads}) is not a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads})"
            )

    @classmethod
    def from_dict(cls, source: dict[str, Any]) -> "ModelConfig":
        values = dict(source)
        if "model_type" not in values:
            raise ValueError("config has no model_type")
        values.pop("text_config", None)
        if "dtype" in values and "torch_dtype" not in values:
            values["torch_dtype"] = values.pop("dtype")
        values["rope_parameters"] = _standard_rope_parameters(values)
        for source_key, field_name in FIELD_ALIASES.items():  # the source key stays in `extra` for saving
            if values.get(source_key) is not None and field_name not in values:
                values[field_name] = values[source_key]
        declared = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        known = {key: values.pop(key) for key in list(values) if key in declared}
        return cls(**known, extra=values)

    @classmethod
    def from_json_file(cls, path: str | Path) -> "ModelConfig":
        path = Path(path)
        try:
            source = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise CheckpointError(path, "config.json not found") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise CheckpointError(path, f"not valid JSON: {error}") from None
        if not isinstance(source, dict):
            raise CheckpointError(path, "config.json does not hold a JSON object")
        check_config_values(path, source)
        try:
            return cls.from_dict(source)
        except (TypeError, ValueError) as error:
            raise CheckpointError(path, f"invalid config: {error}") from None

    def get(self, name: str, default: Any = None) -> Any:
        """A family-specific field (kept in `extra`) or a declared one."""
        if name in self.extra:
            return self.extra[name]
        return getattr(self, name, default)

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        out.update(self.extra)
        return out

    @property
    def rope_theta(self) -> float:
        return float(self.rope_parameters.get("rope_theta", 10000.0))


def _standard_rope_parameters(values: dict[str, Any]) -> dict[str, Any]:
    """Accept both transformers v4 (`rope_theta` + `rope_scaling`) and v5 (`rope_parameters`) spellings."""
    params = dict(values.pop("rope_parameters", None) or {})
    if any(isinstance(v, dict) for v in params.values()):
        return params  # per-layer-type parameters (Gemma 3): the architecture file reads them
    scaling = values.pop("rope_scaling", None) or {}
    theta = values.pop("rope_theta", None)
    params.update({k: v for k, v in scaling.items() if k not in params})
    if "type" in params and "rope_type" not in params:
        params["rope_type"] = params.pop("type")
    params.setdefault("rope_type", "default")
    if theta is not None:
        params.setdefault("rope_theta", float(theta))
    params.setdefault("rope_theta", 10000.0)
    if "partial_rotary_factor" in values:
        params.setdefault("partial_rotary_factor", values["partial_rotary_factor"])
    return params
