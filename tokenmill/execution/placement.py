"""Where each part of a model lives: `device_map` and `max_memory` (transformers / accelerate semantics) turned
into a `DevicePlacement`, plain data the execution policy carries and the assembly applies.

Modules are placed whole, in execution order (embedding, decoder layers, final norm, head), within each device's
budget: GPUs first, then the CPU, then "disk" (decoder layers only: their weights stay in a file and are read
while the layer runs). Every argument is either honoured or refused with what to change.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from ..kernels.system import available_memory

STRATEGIES = ("auto", "balanced", "sequential")
DISK = "disk"
_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


@dataclass(frozen=True)
class DevicePlacement:
    """Module name → device ("cpu", "cuda:N", "disk"), in execution order; `offload_folder` holds the disk
    layers' weights that are not already in a file."""

    devices: tuple[tuple[str, str], ...]
    offload_folder: Path | None = None

    def as_dict(self) -> dict[str, str | int]:
        """transformers' `hf_device_map`: GPUs as their index, others by name."""
        return {name: _hf_device(device) for name, device in self.devices}

    def device_of(self, name: str) -> str:
        return dict(self.devices)[name]

    @property
    def execution_device(self) -> torch.device:
        """Where the embedding runs: the first non-disk device."""
        return torch.device(next(device for _, device in self.devices if device != DISK))

    def uses(self, device: str) -> bool:
        return any(placed == device for _, placed in self.devices)

    def describe(self) -> str:
        counts: dict[str, int] = {}
        for _, device in self.devices:
            counts[device] = counts.get(device, 0) + 1
        return ", ".join(f"{count} on {device}" for device, count in counts.items())


def _hf_device(device: str) -> str | int:
    return int(device.split(":")[1]) if device.startswith("cuda:") else device


def parse_size(value, key) -> int:
    """A budget: bytes as an int, or "300MiB" / "20GB" (GB = 10^9, GiB = 2^30, as accelerate reads them)."""
    if isinstance(value, bool):
        raise ValueError(f"max_memory[{key!r}] must be a size such as '300MiB' or a byte count, got {value!r}")
    if isinstance(value, int):
        size = value
    else:
        match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*", str(value))
        unit = match.group(2).upper() if match else None
        if not match or (unit or "B") not in _UNITS:
            raise ValueError(f"max_memory[{key!r}]: cannot read {value!r} as a size; write it as bytes or with "
                             f"a unit: {', '.join(sorted(_UNITS))} (e.g. '300MiB')")
        size = int(float(match.group(1)) * _UNITS[unit or "B"])
    if size < 0:
        raise ValueError(f"max_memory[{key!r}] must not be negative, got {value!r}")
    return size


def normalize_device(device, what: str) -> str:
    """"cpu", "disk", "cuda:N" (from N, "cuda", "cuda:N"), checked against this machine."""
    if isinstance(device, torch.device):
        device = str(device) if device.type != "cuda" else f"cuda:{device.index or 0}"
    if isinstance(device, int) and not isinstance(device, bool):
        device = f"cuda:{device}"
    if device == "cuda":
        device = "cuda:0"
    if device in ("cpu", DISK):
        return device
    if not isinstance(device, str) or not re.fullmatch(r"cuda:[0-9]+", device):
        raise ValueError(f"{what}: unknown device {device!r}; use 'cpu', 'disk', a GPU index (0, 1, ...) or "
                         f"'cuda:N'")
    index = int(device.split(":")[1])
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if index >= count:
        present = f"GPUs 0..{count - 1}" if count else "no GPU"
        raise ValueError(f"{what}: device {device!r} is not present (this machine has {present}); "
                         f"use 'cpu' or 'disk'" + (" or a present GPU" if count else ""))
    return device


def parse_max_memory(max_memory: dict | None) -> dict[str, int]:
    """Budgets per device, in placement order (GPUs by index, the CPU, then disk); unnamed present devices get
    what they have free now."""
    if max_memory is not None and not isinstance(max_memory, dict):
        raise ValueError(f"max_memory must be a dict such as {{0: '20GiB', 'cpu': '30GiB'}}, got {max_memory!r}")
    budgets = {normalize_device(key, "max_memory"): parse_size(value, key)
               for key, value in (max_memory or {}).items()}
    if max_memory is None:
        for index in range(torch.cuda.device_count() if torch.cuda.is_available() else 0):
            budgets[f"cuda:{index}"] = torch.cuda.mem_get_info(index)[0]
    budgets.setdefault("cpu", _available_cpu_memory())
    gpus = sorted((name for name in budgets if name.startswith("cuda:")), key=lambda name: int(name[5:]))
    ordered = {name: budgets[name] for name in gpus}
    ordered["cpu"] = budgets["cpu"]
    if DISK in budgets:
        ordered[DISK] = budgets[DISK]
    return ordered


def _available_cpu_memory() -> int:
    available = available_memory()
    return 2**62 if available is None else available  # no reading: the CPU is not a limit


def plan_placement(module_sizes: dict[str, int], layer_names: list[str], device_map, max_memory: dict | None,
                   offload_folder=None) -> DevicePlacement:
    """The placement of `module_sizes` (name → bytes, in execution order; `layer_names` the decoder layers,
    the only modules that may go to disk) for a device_map strategy or explicit dict."""
    if isinstance(device_map, str) and device_map not in STRATEGIES:
        device_map = {"": device_map}  # one device for everything, as transformers reads device_map="cpu"
    if isinstance(device_map, dict):
        if max_memory is not None:
            raise ValueError("max_memory applies to device_map='auto'/'balanced'/'sequential'; an explicit "
                             "device_map dict already says where each module goes: drop max_memory or the dict")
        devices = explicit_placement(module_sizes, layer_names, device_map)
    elif isinstance(device_map, str):
        devices = budgeted_placement(module_sizes, layer_names, device_map, parse_max_memory(max_memory))
    else:
        raise ValueError(f"device_map must be one of {STRATEGIES}, a device, or a dict of module name → device; "
                         f"got {device_map!r}")
    folder = Path(offload_folder) if offload_folder is not None else None
    if DISK in devices.values():
        if folder is None:
            raise ValueError("some decoder layers are placed on 'disk': pass offload_folder=<a folder> for the "
                             "weights that have to be written there, or raise max_memory")
        folder.mkdir(parents=True, exist_ok=True)
    return DevicePlacement(tuple(devices.items()), folder)


def explicit_placement(module_sizes: dict[str, int], layer_names: list[str], device_map: dict) -> dict[str, str]:
    """Each module's device from the longest device_map key that is it or contains it."""
    names = list(module_sizes)
    parents = {name.rsplit(".", 1)[0] for name in layer_names} | {"model"}
    devices = {}
    for key, device in device_map.items():
        if not isinstance(key, str):
            raise ValueError(f"device_map keys are module names, got {key!r}")
        if key and key not in names and key not in parents:
            finer = [name for name in names if key.startswith(name + ".")]
            if finer:
                raise ValueError(f"device_map key {key!r} is inside {finer[0]!r}: tokenmill places whole modules; "
                                 f"use {finer[0]!r}")
            raise ValueError(f"device_map key {key!r} names no module of this model; its modules are "
                             f"{names[0]}, ..., {names[-1]} (or 'model', or '' for all)")
        devices[key] = normalize_device(device, f"device_map[{key!r}]")
    placed = {}
    for name in names:
        owners = [key for key in devices if key == "" or name == key or name.startswith(key + ".")]
        if not owners:
            raise ValueError(f"device_map has no entry for {name!r}: add it (or a module containing it)")
        placed[name] = devices[max(owners, key=len)]
        if placed[name] == DISK and name not in layer_names:
            raise ValueError(f"device_map puts {name!r} on 'disk': only decoder layers ({layer_names[0]}, ...) "
                             f"can be offloaded to disk; put it on 'cpu' or a GPU")
    _check_one_execution_device(placed)
    return placed


def budgeted_placement(module_sizes: dict[str, int], layer_names: list[str], strategy: str,
                       budgets: dict[str, int]) -> dict[str, str]:
    """Modules in order onto each device until its budget is spent, then the next; decoder layers that fit
    nowhere go to disk, and the device that runs them keeps room for the largest."""
    budgets = dict(budgets)
    gpus = [name for name in budgets if name.startswith("cuda:")]
    if strategy in ("auto", "balanced") and len(gpus) > 1:
        share = math.ceil(sum(module_sizes.values()) / len(gpus)) + max(module_sizes[n] for n in layer_names)
        budgets.update({gpu: min(budgets[gpu], share) for gpu in gpus[:-1]})
    memory = [name for name in budgets if name != DISK]
    largest_layer = max(module_sizes[name] for name in layer_names)
    needs_disk = sum(module_sizes.values()) > sum(budgets[name] for name in memory)
    trailing = list(module_sizes)[list(module_sizes).index(layer_names[-1]) + 1:]
    if needs_disk:
        budgets[memory[-1]] -= largest_layer  # the disk layer being read is materialized on the last device
        if budgets[memory[-1]] < sum(module_sizes[name] for name in trailing):
            raise ValueError(f"max_memory[{_key(memory[-1])!r}] is too small to run even one decoder layer from "
                             f"disk: the largest layer needs {_mib(largest_layer)}; raise it to at least "
                             f"{_mib(largest_layer + sum(module_sizes[name] for name in trailing))} (a layer and "
                             f"the modules after the layers, {', '.join(trailing)})")
        # the modules after the layers (final norm, head) cannot go to disk: their room is kept
        budgets[memory[-1]] -= sum(module_sizes[name] for name in trailing)
    placed, device_index = {}, 0
    for name, size in module_sizes.items():
        if needs_disk and name in trailing:
            placed[name] = memory[-1]
            continue
        while device_index < len(memory) and size > budgets[memory[device_index]]:
            device_index += 1
        if device_index < len(memory):
            placed[name] = memory[device_index]
            budgets[memory[device_index]] -= size
        elif name in layer_names:
            placed[name] = DISK
        else:
            raise ValueError(f"max_memory is too small: {name} ({_mib(size)}) fits on no device after the layers "
                             f"before it ({_budget_text(budgets)} left); raise max_memory for "
                             f"{memory[-1]!r}")
    _check_one_execution_device(placed)
    return placed


def _check_one_execution_device(placed: dict[str, str]) -> None:
    if all(device == DISK for device in placed.values()):
        raise ValueError("every module is on 'disk': the embedding and head need a CPU or GPU device")


def _mib(size: int) -> str:
    return f"{size / 2**20:.1f} MiB"


def _key(device: str):
    return _hf_device(device)


def _budget_text(budgets: dict[str, int]) -> str:
    return ", ".join(f"{_key(name)}: {_mib(max(0, left))}" for name, left in budgets.items())
