"""The PEFT LoRA adapter reader: `adapter_config.json` + `adapter_model.safetensors` → plain tensors per module.

PEFT saves `base_model.model.<module path>.lora_A.weight` ([r, in]) and `.lora_B.weight` ([out, r]); the delta
on that module's output is x @ A^T @ B^T * scale, scale = lora_alpha / r (lora_alpha / sqrt(r) with
use_rslora), with per-module r and alpha from rank_pattern / alpha_pattern. LoRA on bare parameters
(`target_parameters`: stacked MoE experts, routers) is saved the same way under the owning module's path, one
`.base_layer` deeper per further parameter of that module; the assembly tells them apart. What changes the arithmetic in
ways this reader does not reproduce (DoRA, bias terms, modules_to_save's full copies, other PEFT types) is
refused by name rather than silently ignored.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from .safetensors import read_safetensors

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
_PREFIX = "base_model.model."
_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<part>[AB])(?:\.(?P<name>[^.]+))?\.weight$")


class AdapterError(ValueError):
    """An adapter folder that cannot be read or applied, naming the file and the field at fault."""


@dataclass
class LoraModule:
    """One target module of a LoRA adapter, in the names and layout of the base checkpoint."""

    a: torch.Tensor  # [r, in] ([experts * r, in] on a stacked expert parameter)
    b: torch.Tensor  # [out, r] ([out, r * experts])
    scale: float  # for a module target (a parameter target's rank is per expert: the assembly works it out)


@dataclass
class PeftLora:
    path: Path
    config: dict
    modules: dict[str, LoraModule]  # checkpoint module path (without PEFT's prefix) → its factors
    fan_in_fan_out: bool  # the base stores these weights transposed (GPT-2's Conv1D)


def _refuse_unsupported(config: dict, where: Path) -> None:
    kind = config.get("peft_type", "LORA")
    if str(kind).upper() != "LORA":
        raise AdapterError(f"{where}: peft_type {kind!r} is not supported; tokenmill applies LoRA adapters only")
    refused = {
        "use_dora": "DoRA adapters (use_dora=true) are not supported",
        "modules_to_save": "modules_to_save (full copies of modules such as lm_head) are not supported; "
                           "train the adapter without them or merge it with peft first",
        "layers_to_transform": "layers_to_transform is not supported",
        "trainable_token_indices": "trainable_token_indices is not supported",
    }
    for field, reason in refused.items():
        if config.get(field):
            raise AdapterError(f"{where}: {reason} ({field}={config[field]!r})")
    if config.get("bias", "none") != "none" or config.get("lora_bias"):
        raise AdapterError(f"{where}: adapters with trained biases (bias={config.get('bias')!r}, "
                           f"lora_bias={config.get('lora_bias')!r}) are not supported")


def _pattern_value(pattern: dict, module: str, default):
    """PEFT's rank_pattern / alpha_pattern: the first key that is a suffix-regex match of the module path."""
    for key, value in (pattern or {}).items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def module_scale(config: dict, module: str, rank: int) -> float:
    alpha = _pattern_value(config.get("alpha_pattern"), module, config.get("lora_alpha", 8))
    return alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank


def read_peft_lora(path: str | Path) -> PeftLora:
    """Read and check a PEFT LoRA folder; AdapterError naming what is missing or unsupported."""
    folder = Path(path)
    config_file, weights_file = folder / CONFIG_FILE, folder / WEIGHTS_FILE
    if not config_file.is_file():
        raise AdapterError(f"{folder}: no {CONFIG_FILE} (a PEFT LoRA adapter folder holds {CONFIG_FILE} and "
                           f"{WEIGHTS_FILE})")
    if not weights_file.is_file():
        other = " (adapter_model.bin is not read: save with safe_serialization=True)" \
            if (folder / "adapter_model.bin").exists() else ""
        raise AdapterError(f"{folder}: no {WEIGHTS_FILE}{other}")
    try:
        config = json.loads(config_file.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise AdapterError(f"{config_file}: not readable JSON ({error})") from None
    _refuse_unsupported(config, config_file)
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in read_safetensors(weights_file, None).items():
        match = _KEY.match(key.removeprefix(_PREFIX))
        if key.endswith(".base_layer.weight"):
            raise AdapterError(f"{weights_file}: tensor {key!r} is a full copy of a base layer (peft saves one for "
                               f"an adapter on embeddings or lm_head, which tokenmill does not apply)")
        if match is None:
            raise AdapterError(f"{weights_file}: tensor {key!r} is not a LoRA A/B weight (only "
                               f"'<module>.lora_A.weight' / '.lora_B.weight' are supported)")
        parts.setdefault(match["module"], {})[match["part"]] = tensor
    modules = {}
    for module, factors in parts.items():
        if set(factors) != {"A", "B"}:
            raise AdapterError(f"{weights_file}: {module} has lora_{''.join(factors)} but not both A and B")
        a, b = factors["A"], factors["B"]
        if a.dim() != 2 or b.dim() != 2 or a.shape[0] != b.shape[1]:
            raise AdapterError(f"{weights_file}: {module}: lora_A {tuple(a.shape)} and lora_B {tuple(b.shape)} "
                               f"are not [r, in] and [out, r] (only linear targets are supported)")
        modules[module] = LoraModule(a, b, module_scale(config, module, a.shape[0]))
    if not modules:
        raise AdapterError(f"{weights_file}: holds no LoRA weights")
    return PeftLora(folder, config, modules, bool(config.get("fan_in_fan_out")))
