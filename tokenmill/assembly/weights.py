"""Weights → model: build on the meta device, check names and shapes strictly, assign without copies."""

from __future__ import annotations

import contextlib
import ctypes
from pathlib import Path

import torch
from torch import nn

from ..config import ModelConfig
from ..layers.quantized_linear import QuantizedEmbedding, QuantizedLinear, QuantizedWeight
from ..errors import CheckpointError
from ..loading.gguf import one_thread_per_op
from .pretrained_model import pretrained_class


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


def install_quantized(model: torch.nn.Module, weights: dict, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Put each QuantizedWeight in place as a quantized layer; returns the remaining (float) weights.

    A quantized weight whose module is not a plain Linear or Embedding (a fused expert tensor, a router kept
    as a parameter) is dequantized instead: the kernels only replace what they exactly reproduce.
    """
    remaining = {}
    for name, tensor in weights.items():
        if not isinstance(tensor, QuantizedWeight):
            remaining[name] = tensor
            continue
        path, leaf = name.rpartition(".")[::2]
        module = model.get_submodule(path) if leaf == "weight" else None
        if type(module) is nn.Linear:
            model.set_submodule(path, QuantizedLinear(tensor, bias=module.bias is not None))
        elif type(module) is nn.Embedding:
            model.set_submodule(path, QuantizedEmbedding(tensor))
        else:
            remaining[name] = tensor.dequantize(dtype)
    return remaining


_INITIALIZERS = ("normal_", "uniform_", "kaiming_uniform_", "kaiming_normal_", "xavier_uniform_", "xavier_normal_",
                 "trunc_normal_", "zeros_", "ones_", "constant_")


@contextlib.contextmanager
def _skip_initialization():
    """Random init of meta tensors is wasted work, and meta `normal_` imports torch._dynamo (~2 s, once)."""
    originals = {name: getattr(nn.init, name) for name in _INITIALIZERS}
    for name in _INITIALIZERS:
        setattr(nn.init, name, lambda tensor, *args, **kwargs: tensor)
    try:
        yield
    finally:
        for name, initializer in originals.items():
            setattr(nn.init, name, initializer)


def return_freed_memory() -> None:
    """Give the allocator's freed pages back to the OS (glibc keeps them in per-thread arenas): the parallel
    dequantization frees as much as it keeps, measured ~300 MB of RSS for SmolLM2 in float32."""
    trim = getattr(ctypes.CDLL(None), "malloc_trim", None)  # the process's own symbols: glibc's, if it is glibc
    if trim is not None:
        trim(0)


def build_model(config: ModelConfig, weights: dict[str, torch.Tensor | QuantizedWeight], *, source: Path,
                dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
                attn_implementation: str = "sdpa"):
    cls = pretrained_class(config.model_type)
    weights = cls.sanitize(config, weights)
    with torch.device("meta"), _skip_initialization():
        model = cls(config, attn_implementation=attn_implementation)
    tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
    expected = {name: p.shape for name, p in model.state_dict().items() if name not in tied}
    check_weights(source, expected, weights)
    device = torch.device(device)
    weights = install_quantized(model, weights, dtype)
    converted = {name: t.to(device=device, dtype=dtype if t.is_floating_point() else t.dtype)
                 for name, t in weights.items()}
    model.load_state_dict(converted, strict=False, assign=True)
    model.tie_weights()
    with one_thread_per_op():  # fusing copies weights: memory-bound, and immune to a busy second core
        model.reset_non_persistent_buffers()
    model.use_native_kernels(model.is_quantized())
    return model.eval().requires_grad_(False)
