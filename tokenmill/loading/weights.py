"""Weights → model: build on the meta device, check names and shapes strictly, assign without copies."""

from __future__ import annotations

from pathlib import Path

import torch

from ..config import ModelConfig
from ..errors import CheckpointError
from ..models.registry import model_class


def _describe(names, limit: int = 8) -> str:
    names = sorted(names)
    shown = ", ".join(names[:limit])
    return shown + (f" … (+{len(names) - limit} more)" if len(names) > limit else "")


def check_weights(source: Path, expected: dict[str, torch.Size], weights: dict[str, torch.Tensor]) -> None:
    missing = expected.keys() - weights.keys()
    unexpected = weights.keys() - expected.keys()
    if missing:
        raise CheckpointError(source, f"missing weights: {_describe(missing)}")
    if unexpected:
        raise CheckpointError(source, f"unexpected weights (wrong architecture?): {_describe(unexpected)}")
    for name, shape in expected.items():
        if weights[name].shape != shape:
            raise CheckpointError(
                source, f"shape mismatch for {name}: checkpoint has {tuple(weights[name].shape)}, "
                        f"the config implies {tuple(shape)}")


def build_model(config: ModelConfig, weights: dict[str, torch.Tensor], *, source: Path,
                dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
                attn_implementation: str = "sdpa"):
    cls = model_class(config.model_type)
    weights = cls.sanitize(config, weights)
    with torch.device("meta"):
        model = cls(config, attn_implementation=attn_implementation)
    tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
    expected = {name: p.shape for name, p in model.state_dict().items() if name not in tied}
    check_weights(source, expected, weights)
    device = torch.device(device)
    converted = {name: t.to(device=device, dtype=dtype if t.is_floating_point() else t.dtype)
                 for name, t in weights.items()}
    model.load_state_dict(converted, strict=False, assign=True)
    model.tie_weights()
    model.reset_non_persistent_buffers()
    return model.eval().requires_grad_(False)
