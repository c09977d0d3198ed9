"""transformers-style entry points: AutoConfig, AutoModelForCausalLM, AutoTokenizer (same names, same arguments)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from .config import ModelConfig
from .errors import CheckpointError
from .generation.config import GenerationConfig
from .loading.resolve import ResolvedSource, resolve

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


def _open_gguf(path: Path):
    from .loading.gguf import GGUFCheckpoint

    return GGUFCheckpoint(path)


def _resolve(source, gguf_file=None, **hub_kwargs) -> ResolvedSource:
    hub = {k: hub_kwargs.get(k) for k in ("revision", "cache_dir")}
    return resolve(source, gguf_file=gguf_file, local_files_only=bool(hub_kwargs.get("local_files_only")), **hub)


class AutoConfig:
    @staticmethod
    def from_pretrained(source, gguf_file: str | None = None, **hub_kwargs) -> ModelConfig:
        resolved = _resolve(source, gguf_file, **hub_kwargs)
        if resolved.is_gguf:
            return ModelConfig.from_dict(_open_gguf(resolved.gguf_path).config_dict())
        return ModelConfig.from_json_file(resolved.folder / "config.json")


def load_generation_config(resolved: ResolvedSource, gguf=None) -> GenerationConfig:
    path = resolved.folder / "generation_config.json"
    if not resolved.is_gguf and path.is_file():
        return GenerationConfig.from_pretrained(resolved.folder)
    if gguf is not None:
        return GenerationConfig.from_dict(gguf.generation_config_dict())
    config_path = resolved.folder / "config.json"
    if config_path.is_file():
        source = json.loads(config_path.read_text(encoding="utf-8"))
        return GenerationConfig.from_dict({k: source[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id")
                                           if source.get(k) is not None})
    return GenerationConfig()


class AutoModelForCausalLM:
    @staticmethod
    def from_pretrained(source, *, dtype=None, device=None, gguf_file: str | None = None,
                        attn_implementation: str = "sdpa", allow_pickle: bool = False,
                        progress: bool = True, torch_dtype=None, keep_quantized: bool | None = None,
                        kernels: str | None = None, **hub_kwargs):
        """keep_quantized (GGUF only): keep block-quantized weights in their format and compute in float32
        with tokenmill's CPU kernels (same values, ~7x less memory traffic). None: yes when the model runs in
        float32 on the CPU and the kernels could be built; False: dequantize every tensor at load.
        kernels: "native", "exact" or "torch" (None: the policy's choice). With the other arguments it makes the
        model's execution policy (`model.execution_policy`, see execution/policy.py); an impossible combination
        raises ExecutionPolicyError before any weight is read."""
        from .execution.policy import choose_policy
        from .loading.safetensors import read_folder_weights
        from .loading.weights import build_model, return_freed_memory
        from .models.registry import model_class

        started = time.perf_counter()
        resolved = _resolve(source, gguf_file, **hub_kwargs)
        gguf = None
        if resolved.is_gguf:
            gguf = _open_gguf(resolved.gguf_path)
            config = ModelConfig.from_dict(gguf.config_dict())
            model_class(config.model_type)  # an unsupported family fails before any weight is read
            target_dtype = parse_dtype(dtype or torch_dtype, "float32")
            policy = choose_policy(device=parse_device(device), dtype=target_dtype, gguf=True,
                                   keep_quantized=keep_quantized, kernels=kernels,
                                   attn_implementation=attn_implementation)
            weights = gguf.state_dict(dtype=target_dtype, progress=progress,
                                      keep_quantized=policy.weight_format == "gguf-blocks")
            origin = resolved.gguf_path
        else:
            config = ModelConfig.from_json_file(resolved.folder / "config.json")
            model_class(config.model_type)
            target_dtype = parse_dtype(dtype or torch_dtype, config.torch_dtype)
            policy = choose_policy(device=parse_device(device), dtype=target_dtype, keep_quantized=keep_quantized,
                                   kernels=kernels, attn_implementation=attn_implementation)
            weights = read_folder_weights(resolved.folder, target_dtype, allow_pickle=allow_pickle, progress=progress)
            origin = resolved.folder
        model = build_model(config, weights, source=origin, policy=policy)
        del weights  # the unfused originals: fusing copied each layer's q/k/v and gate/up into one matrix
        return_freed_memory()
        model.generation_config = load_generation_config(resolved, gguf)
        model.name_or_path = str(source)
        model.load_seconds = time.perf_counter() - started
        return model


class AutoTokenizer:
    @staticmethod
    def from_pretrained(source, gguf_file: str | None = None, padding_side: str | None = None, **hub_kwargs):
        from .tokenizer import Tokenizer

        resolved = _resolve(source, gguf_file, **hub_kwargs)
        if resolved.is_gguf:
            return Tokenizer.from_gguf(resolved.gguf_path, padding_side=padding_side)
        if not (resolved.folder / "tokenizer.json").is_file():
            raise CheckpointError(resolved.folder, "no tokenizer.json (tokenmill reads fast-tokenizer files)")
        return Tokenizer.from_folder(resolved.folder, padding_side=padding_side)


def generation_config_from_pretrained(source, gguf_file: str | None = None, **hub_kwargs) -> GenerationConfig:
    """GenerationConfig.from_pretrained for any source: folder, GGUF file or Hub id."""
    resolved = _resolve(source, gguf_file, **hub_kwargs)
    return load_generation_config(resolved, _open_gguf(resolved.gguf_path) if resolved.is_gguf else None)


