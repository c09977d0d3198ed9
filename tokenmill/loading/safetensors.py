"""Hugging Face weight files: single or sharded safetensors (memory-mapped), pickle only on explicit opt-in."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from ..errors import CheckpointError, PickleCheckpointError

SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
PICKLE_FILES = ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.pt", "consolidated.pth")


def weight_files(folder: Path) -> list[Path]:
    """The safetensors files holding a folder's weights, in shard order."""
    index = folder / SAFETENSORS_INDEX
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as error:
            raise CheckpointError(index, f"invalid shard index: {type(error).__name__}: {error}") from None
        shards = _shard_names(index, weight_map)
        missing = [name for name in shards if not (folder / name).is_file()]
        if missing:
            raise CheckpointError(index, f"shard(s) listed but missing: {', '.join(missing)}")
        return [folder / name for name in shards]
    single = folder / SAFETENSORS_FILE
    if single.is_file():
        return [single]
    others = sorted(folder.glob("*.safetensors"))
    if others:
        return others
    pickles = [folder / name for name in PICKLE_FILES if (folder / name).is_file()]
    if pickles:
        return pickles
    raise CheckpointError(folder, "no weights found (expected model.safetensors or model.safetensors.index.json)")


def _shard_names(index: Path, weight_map) -> list[str]:
    """The distinct shard files of a weight map: plain file names in the folder, nothing outside it."""
    if not isinstance(weight_map, dict) or not all(isinstance(name, str) for name in weight_map.values()):
        raise CheckpointError(index, "invalid shard index: weight_map must map tensor names to file names")
    shards = sorted(set(weight_map.values()))
    outside = [name for name in shards if Path(name).name != name or name in ("", ".", "..")]
    if outside:
        raise CheckpointError(index, f"invalid shard index: shard names must be file names in the folder, "
                                     f"got {outside[0]!r}")
    return shards


def read_safetensors(path: Path, dtype: torch.dtype | None, on_tensor=None) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    try:
        with safe_open(str(path), framework="pt") as handle:
            for name in handle.keys():
                tensor = handle.get_tensor(name)
                tensors[name] = tensor.to(dtype) if dtype is not None and tensor.is_floating_point() else tensor
                if on_tensor is not None:
                    on_tensor(1)
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise CheckpointError(path, f"cannot read safetensors (truncated or corrupt?): {error}") from None
    return tensors


def read_pickle(path: Path, dtype: torch.dtype | None, allow_pickle: bool) -> dict[str, torch.Tensor]:
    if not allow_pickle:
        raise PickleCheckpointError(
            path, "pickle checkpoints can run code when loaded and are refused; convert to safetensors "
                  "or pass allow_pickle=True if you trust this file (it is then read with weights_only=True)")
    if path.name.endswith(".index.json"):
        shards = sorted(set(json.loads(path.read_text())["weight_map"].values()))
        merged: dict[str, torch.Tensor] = {}
        for shard in shards:
            merged.update(read_pickle(path.parent / shard, dtype, allow_pickle))
        return merged
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as error:  # torch raises many types for bad pickles
        raise CheckpointError(path, f"cannot read pickle checkpoint with weights_only=True: {error}") from None
    return {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v) for k, v in state.items()}


def _tensor_count(files: list[Path]) -> int | None:
    """How many tensors the safetensors files hold, from their headers; None if one cannot be read."""
    try:
        count = 0
        for path in files:
            with safe_open(str(path), framework="pt") as handle:
                count += len(handle.keys())
        return count
    except (SafetensorError, OSError, ValueError, RuntimeError):
        return None  # read_safetensors reports the bad file with its reason


def _loading_bar(files: list[Path], enabled: bool):
    """A tqdm bar that appears only if loading is still running after half a second."""
    from tqdm.auto import tqdm

    total = _tensor_count([path for path in files if path.suffix == ".safetensors"]) if enabled else None
    return tqdm(total=total, desc="Loading safetensors", unit="tensor", delay=0.5, leave=False, disable=not enabled)


def read_folder_weights(folder: Path, dtype: torch.dtype | None, allow_pickle: bool = False,
                        progress: bool = True) -> dict[str, torch.Tensor]:
    files = weight_files(folder)
    state: dict[str, torch.Tensor] = {}
    with _loading_bar(files, progress) as bar:
        for path in files:
            if path.suffix == ".safetensors":
                state.update(read_safetensors(path, dtype, on_tensor=bar.update))
            else:
                state.update(read_pickle(path, dtype, allow_pickle))
    return state
