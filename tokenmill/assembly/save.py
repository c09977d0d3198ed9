"""model.save_pretrained: a Hugging Face folder (config.json, safetensors, sharded with an index above a size,
generation_config.json) that tokenmill and transformers both load."""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..loading.safetensors import SAFETENSORS_FILE, SAFETENSORS_INDEX

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?I?B)?\s*$", re.IGNORECASE)
_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_size(size: int | str) -> int:
    """5_000_000, "5MB" (powers of 10) or "5MiB" (powers of 2) → bytes, as transformers reads max_shard_size."""
    if isinstance(size, int):
        return size
    match = _SIZE.match(str(size))
    if match is None:
        raise ValueError(f"cannot read the size {size!r}; use bytes or e.g. '500MB', '2GiB'")
    return int(float(match[1]) * _UNITS[(match[2] or "B").upper()])


def checkpoint_state(model) -> dict[str, torch.Tensor]:
    """The model's tensors in checkpoint names/layout, contiguous, on the CPU, no two sharing memory."""
    weights = type(model).checkpoint_weights(model.config, dict(model.state_dict()))
    out, seen_storages = {}, set()
    for name, tensor in weights.items():
        tensor = tensor.detach().to("cpu").contiguous()
        storage = tensor.untyped_storage().data_ptr()
        if storage in seen_storages:  # safetensors refuses tensors sharing memory (views of a split fused weight)
            tensor = tensor.clone()
        seen_storages.add(tensor.untyped_storage().data_ptr())
        out[name] = tensor
    return out


def plan_shards(weights: dict[str, torch.Tensor], max_bytes: int) -> list[dict[str, torch.Tensor]]:
    """Greedy in name order: a new shard starts when the next tensor would push this one past max_bytes."""
    shards: list[dict[str, torch.Tensor]] = [{}]
    used = 0
    for name in sorted(weights):
        size = weights[name].numel() * weights[name].element_size()
        if shards[-1] and used + size > max_bytes:
            shards.append({})
            used = 0
        shards[-1][name] = weights[name]
        used += size
    return shards


def write_weights(weights: dict[str, torch.Tensor], folder: Path, max_shard_size: int | str,
                  progress: bool = False) -> list[str]:
    shards = plan_shards(weights, parse_size(max_shard_size))
    file_names = ([SAFETENSORS_FILE] if len(shards) == 1 else
                  [f"model-{n:05d}-of-{len(shards):05d}.safetensors" for n in range(1, len(shards) + 1)])
    for file_name, shard in _with_progress(list(zip(file_names, shards)), progress):
        save_file(shard, str(folder / file_name), metadata={"format": "pt"})
    if len(shards) == 1:
        return file_names
    weight_map = {name: file_name for file_name, shard in zip(file_names, shards) for name in shard}
    names = list(file_names)
    total = sum(t.numel() * t.element_size() for t in weights.values())
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (folder / SAFETENSORS_INDEX).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    return names + [SAFETENSORS_INDEX]


def _with_progress(items: list, enabled: bool):
    if not enabled:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc="writing safetensors", unit="file")


def config_json(model) -> dict:
    """transformers v5 spelling: `dtype`, `rope_parameters`, `architectures` naming the class."""
    source = model.config.to_dict()
    source.pop("torch_dtype", None)
    source["dtype"] = str(model.dtype).replace("torch.", "")
    source["architectures"] = [type(model).__name__]
    source = type(model).checkpoint_config(source)
    return dict(sorted(source.items()))


def save_pretrained(model, save_directory, max_shard_size: int | str = "5GB", progress: bool = False) -> list[str]:
    folder = Path(save_directory)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{folder}: exists and is not a folder")
    folder.mkdir(parents=True, exist_ok=True)
    for stale in [folder / SAFETENSORS_INDEX, *folder.glob("model-*-of-*.safetensors"), folder / SAFETENSORS_FILE]:
        stale.unlink(missing_ok=True)  # a previous save with other sharding would otherwise be read too
    written = write_weights(checkpoint_state(model), folder, max_shard_size, progress)
    (folder / "config.json").write_text(json.dumps(config_json(model), indent=2) + "\n", encoding="utf-8")
    written.append("config.json")
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(folder)
        written.append("generation_config.json")
    return written
