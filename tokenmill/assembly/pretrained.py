"""from_pretrained's work: resolve the source, read config + weights, build the model, attach its generation config."""

from __future__ import annotations

import time

import torch

from ..execution.policy import choose_policy
from ..config import ModelConfig
from ..generation.config import generation_config_of
from ..loading.gguf import GGUFCheckpoint
from ..loading.resolve import resolve_source
from ..loading.safetensors import read_folder_weights
from ..models.registry import gguf_architectures, model_class
from .weights import build_model, return_freed_memory

_DTYPES = {"float32": torch.float32, "float": torch.float32, "fp32": torch.float32,
           "float16": torch.float16, "half": torch.float16, "fp16": torch.float16,
           "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def parse_dtype(dtype, checkpoint_dtype: str | None) -> torch.dtype:
    """None/'auto' → the checkpoint's own float dtype (float32 for a dequantized GGUF)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        return _DTYPES.get(str(checkpoint_dtype).replace("torch.", ""), torch.float32)
    try:
        return _DTYPES[str(dtype).replace("torch.", "")]
    except KeyError:
        raise ValueError(f"unsupported dtype {dtype!r}; use one of {sorted(set(_DTYPES))} or 'auto'") from None


def parse_device(device) -> torch.device:
    """None means the CPU, as in transformers; "auto" picks CUDA when one is present."""
    if device is None:
        return torch.device("cpu")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load_config(source, gguf_file: str | None = None, **hub_kwargs) -> ModelConfig:
    resolved = resolve_source(source, gguf_file, **hub_kwargs)
    if resolved.is_gguf:
        return ModelConfig.from_dict(GGUFCheckpoint(resolved.gguf_path, gguf_architectures()).config_dict())
    return ModelConfig.from_json_file(resolved.folder / "config.json")


def load_model(source, *, dtype=None, device=None, gguf_file: str | None = None,
               attn_implementation: str = "sdpa", allow_pickle: bool = False,
               progress: bool = True, torch_dtype=None, keep_quantized: bool | None = None,
               kernel_set: str | None = None, **hub_kwargs):
    """AutoModelForCausalLM.from_pretrained (see its docstring); the request and the machine make the model's
    execution policy, and an impossible combination raises ExecutionPolicyError before any weight is read."""
    started = time.perf_counter()
    resolved = resolve_source(source, gguf_file, **hub_kwargs)
    gguf = None
    if resolved.is_gguf:
        gguf = GGUFCheckpoint(resolved.gguf_path, gguf_architectures())
        config = ModelConfig.from_dict(gguf.config_dict())
        model_class(config.model_type)  # an unsupported family fails before any weight is read
        target_dtype = parse_dtype(dtype or torch_dtype, "float32")
        policy = choose_policy(device=parse_device(device), dtype=target_dtype, gguf=True,
                               keep_quantized=keep_quantized, kernels=kernel_set,
                               attn_implementation=attn_implementation)
        weights = gguf.state_dict(dtype=target_dtype, progress=progress,
                                  keep_quantized=policy.weight_format == "gguf-blocks")
        origin = resolved.gguf_path
    else:
        config = ModelConfig.from_json_file(resolved.folder / "config.json")
        model_class(config.model_type)
        target_dtype = parse_dtype(dtype or torch_dtype, config.torch_dtype)
        policy = choose_policy(device=parse_device(device), dtype=target_dtype, keep_quantized=keep_quantized,
                               kernels=kernel_set, attn_implementation=attn_implementation)
        weights = read_folder_weights(resolved.folder, target_dtype, allow_pickle=allow_pickle, progress=progress)
        origin = resolved.folder
    model = build_model(config, weights, source=origin, policy=policy)
    del weights  # the unfused originals: fusing copied each layer's q/k/v and gate/up into one matrix
    return_freed_memory()
    model.generation_config = generation_config_of(resolved, gguf)
    model.name_or_path = str(source)
    model.load_seconds = time.perf_counter() - started
    return model
