"""from_pretrained's device_map / max_memory / offload_folder: the built model's modules measured, placed
(execution/placement.py), moved, and hooked (execution/offload.py); the placement joins the execution policy."""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from ..execution.offload import (DiskOffload, copy_into_memory, drop_mapped_pages, file_page_releaser,
                                 install_device_hook)
from ..kernels.system import return_freed_memory
from ..execution.placement import DISK, STRATEGIES, DevicePlacement, normalize_device, plan_placement


def check_placement_request(device_map, max_memory, offload_folder, device) -> None:
    """Refuse argument combinations that would leave one of them without effect, before any weight is read."""
    if device_map is None:
        if max_memory is not None:
            raise ValueError("max_memory takes effect with device_map='auto'/'balanced'/'sequential'; add one")
        if offload_folder is not None:
            raise ValueError("offload_folder takes effect with a device_map that can place layers on 'disk'; "
                             "add device_map='auto' (with max_memory) or a dict, or drop offload_folder")
        return
    if device is not None:
        raise ValueError(f"pass device={device!r} or device_map={device_map!r}, not both")
    if isinstance(device_map, dict):
        for key, value in device_map.items():
            normalize_device(value, f"device_map[{key!r}]")  # an absent GPU fails before the weights are read
    elif not (isinstance(device_map, str) and device_map in STRATEGIES):
        normalize_device(device_map, "device_map")


def requests_gpu(device_map, max_memory) -> bool:
    """Whether the placement may use a GPU: then the model is built dense, for ATen (the block kernels are CPU)."""
    if isinstance(device_map, dict):
        return any(normalize_device(value, "device_map").startswith("cuda") for value in device_map.values())
    if isinstance(device_map, str) and device_map not in STRATEGIES:
        return normalize_device(device_map, "device_map").startswith("cuda")
    if max_memory is not None:
        return any(normalize_device(key, "max_memory").startswith("cuda") for key in max_memory)
    return torch.cuda.is_available()


def placeable_modules(model: nn.Module) -> tuple[dict[str, nn.Module], list[str]]:
    """The modules placed whole, in execution order (embedding, each decoder layer, the rest of the decoder,
    the head), and the decoder layers' names; rotary tables follow the activations."""
    modules: dict[str, nn.Module] = {}
    for name, child in model.model.named_children():
        if name == "layers":
            modules.update({f"model.layers.{index}": layer for index, layer in enumerate(child)})
        elif name != "rotaries":
            modules[f"model.{name}"] = child
    modules["lm_head"] = model.lm_head
    return modules, [name for name in modules if name.startswith("model.layers.")]


def module_bytes(module: nn.Module, counted: set[int]) -> int:
    """Bytes of the module's tensors not yet in `counted` (tied weights count once, where first met)."""
    total = 0
    for tensor in (*module.parameters(), *module.buffers()):
        if tensor.data_ptr() not in counted:
            counted.add(tensor.data_ptr())
            total += tensor.numel() * tensor.element_size()
    return total


def build_arguments(device_map) -> dict:
    """build_model's arguments under a placement: projections fused only where they stay in memory (by
    place_model), and each weight's file pages dropped once checked."""
    return {} if device_map is None else {"fuse": False, "after_check": file_page_releaser()}


def place_model(model: nn.Module, device_map, max_memory, offload_folder) -> DevicePlacement:
    """Place the built model's modules, move them, and install the hooks that run it across devices."""
    modules, layer_names = placeable_modules(model)
    counted: set[int] = set()
    sizes = {name: module_bytes(module, counted) for name, module in modules.items()}
    placement = plan_placement(sizes, layer_names, device_map, max_memory, offload_folder)
    if model.config.tie_word_embeddings:
        placement = _with_tied_head(placement)
    devices = dict(placement.devices)
    for name, module in modules.items():
        target = torch.device("cpu" if devices[name] == DISK else devices[name])
        if target.type != "cpu":
            module.to(target)
        if devices[name] != DISK:  # a disk layer is fused as it goes to the offload file (one at a time)
            _fuse(module)
        install_device_hook(module, target)
    if model.config.tie_word_embeddings:
        model.tie_weights()
    model.model.rotaries.to(placement.execution_device)
    disk = {name: modules[name] for name in layer_names if devices[name] == DISK}
    if disk:
        copy_into_memory([module for name, module in modules.items() if devices[name] == "cpu"])
        model.disk_offload = DiskOffload(disk, placement.offload_folder, prepare=_fuse)
        drop_mapped_pages(list(modules.values()))
    model.hf_device_map = placement.as_dict()
    model.execution_policy = dataclasses.replace(model.execution_policy, device=placement.execution_device,
                                                 placement=placement)
    return placement


def _fuse(module: nn.Module) -> None:
    """Fuse the module's projections (copies of q/k/v and gate/up), then drop the file pages that read. The
    previous disk layer's copies were just moved to the offload file: their memory goes back to the OS first."""
    return_freed_memory()
    for part in module.modules():
        if part is not module and hasattr(part, "fuse_projections"):
            part.fuse_projections()
    drop_mapped_pages([module])


def _with_tied_head(placement: DevicePlacement) -> DevicePlacement:
    """A tied head reads the embedding's weight: it runs where the embedding is."""
    devices = dict(placement.devices)
    devices["lm_head"] = devices["model.embed_tokens"]
    return dataclasses.replace(placement, devices=tuple(devices.items()))
