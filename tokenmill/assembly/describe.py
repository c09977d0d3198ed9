"""What `tokenmill info` shows, read from headers only (no weights are loaded or dequantized)."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

from safetensors import safe_open

from ..loading.resolve import ResolvedSource, resolve
from ..loading.safetensors import weight_files

SPECIAL_TOKEN_KEYS = ("bos_token", "eos_token", "unk_token", "pad_token")


def _token_text(value):
    return value.get("content") if isinstance(value, dict) else value


def _summary(config: dict, parameters: int, tensor_types: Counter, tokenizer_config: dict, files: list[Path]) -> dict:
    template = tokenizer_config.get("chat_template")
    return {
        "architecture": config.get("model_type"),
        "parameters": parameters,
        "tensor_types": dict(tensor_types.most_common()),
        "context_length": config.get("max_position_embeddings"),
        "layers": config.get("num_hidden_layers"),
        "hidden_size": config.get("hidden_size"),
        "attention_heads": config.get("num_attention_heads"),
        "kv_heads": config.get("num_key_value_heads") or config.get("num_attention_heads"),
        "vocab_size": config.get("vocab_size"),
        "chat_template": bool(template),
        "special_tokens": {key: _token_text(tokenizer_config.get(key)) for key in SPECIAL_TOKEN_KEYS},
        "files": [str(f) for f in files],
        "size_bytes": sum(f.stat().st_size for f in files),
    }


def _describe_gguf(path: Path) -> dict:
    from ..loading.dequant import type_name
    from ..loading.gguf import GGUFCheckpoint
    from ..models.registry import gguf_architectures

    checkpoint = GGUFCheckpoint(path, gguf_architectures())
    infos = checkpoint.tensors.values()
    parameters = sum(math.prod(info.shape) for info in infos)
    types = Counter(type_name(info.ggml_type) for info in infos)
    return _summary(checkpoint.config_dict(), parameters, types, checkpoint.tokenizer_config(), [path])


def _folder_tokenizer_config(folder: Path) -> dict:
    from ..tokenizer.tokenizer_files import read_chat_templates, read_json_object

    config = read_json_object(folder / "tokenizer_config.json") or {}
    templates = read_chat_templates(folder)
    if templates is not None:
        config["chat_template"] = templates
    return config


def _describe_folder(folder: Path) -> dict:
    from ..config import ModelConfig

    # through ModelConfig: a missing or broken config.json is a clear error, GPT-2's n_embd reads as hidden_size
    config = ModelConfig.from_json_file(folder / "config.json").to_dict()
    files = weight_files(folder)
    parameters, types = 0, Counter()
    for path in files:
        if path.suffix != ".safetensors":
            types["pickle (not inspected)"] += 1
            continue
        with safe_open(str(path), framework="pt") as handle:
            for name in handle.keys():
                piece = handle.get_slice(name)
                parameters += math.prod(piece.get_shape())
                types[piece.get_dtype()] += 1
    return _summary(config, parameters, types, _folder_tokenizer_config(folder), files)


def describe(source, gguf_file: str | None = None) -> dict:
    resolved: ResolvedSource = resolve(source, gguf_file=gguf_file)
    if resolved.is_gguf:
        return _describe_gguf(resolved.gguf_path)
    return _describe_folder(resolved.folder)
