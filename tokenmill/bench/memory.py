"""Memory readings: resident set size (current and peak, the peak resettable on Linux) and GPU allocator stats."""

from __future__ import annotations

import os
from pathlib import Path

import torch

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_STATUS = Path("/proc/self/status")


def current_rss() -> int | None:
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * _PAGE
    except OSError:
        return None


def reset_peak_rss() -> bool:
    """Reset the kernel's high-water mark (VmHWM) to the current RSS; False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss() -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def gpu_memory(device: torch.device) -> dict[str, int | None]:
    if device.type != "cuda":
        return {"gpu_peak_allocated_bytes": None, "gpu_peak_reserved_bytes": None}
    return {"gpu_peak_allocated_bytes": torch.cuda.max_memory_allocated(device),
            "gpu_peak_reserved_bytes": torch.cuda.max_memory_reserved(device)}


def reset_gpu_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def weight_bytes(model) -> int:
    """Bytes of the model's parameters and GGUF blocks (quantized layers' buffers), each tensor counted once."""
    if not hasattr(model, "parameters"):  # another engine's handle (llama.cpp): it says what it holds
        return model.weight_bytes
    blocks = [module.blocks for module in model.modules() if isinstance(getattr(module, "blocks", None), torch.Tensor)]
    seen: dict[int, int] = {}
    for tensor in (*model.parameters(), *blocks):
        seen[tensor.data_ptr()] = tensor.numel() * tensor.element_size()
    return sum(seen.values())
