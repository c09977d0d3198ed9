"""The offloaded cache: every layer's keys/values live on the host; a layer is brought to the compute device
just before its attention runs, and the next layer's copy is started meanwhile (non-blocking on a GPU).

On a CPU-only machine host and device are the same, the copies are no-ops and the cache is exactly dynamic.
Only one or two layers' keys/values occupy device memory at a time, which is what lets an out-of-memory
generate() fall back to this kind.
"""

from __future__ import annotations

import torch

from .base import Cache, LayerCache


class OffloadedLayer(LayerCache):
    def __init__(self, cache: "OffloadedCache", layer_idx: int):
        self.cache, self.layer_idx = cache, layer_idx
        self.keys: torch.Tensor | None = None  # host copies
        self.values: torch.Tensor | None = None
        self._on_device: tuple[torch.Tensor, torch.Tensor] | None = None

    def prefetch(self, device: torch.device | None = None) -> None:
        device = device or self.cache.compute_device
        if self.keys is None or device is None or self._on_device is not None:
            return
        non_blocking = device.type != "cpu"
        self._on_device = (self.keys.to(device, non_blocking=non_blocking),
                           self.values.to(device, non_blocking=non_blocking))

    def release(self) -> None:
        self._on_device = None

    def update(self, keys, values):
        self.cache.compute_device = keys.device
        self.prefetch(keys.device)
        self.cache.prefetch_after(self.layer_idx)
        if self._on_device is None:
            full_keys, full_values = keys, values
        else:
            full_keys = torch.cat([self._on_device[0], keys], dim=-2)
            full_values = torch.cat([self._on_device[1], values], dim=-2)
        host = self.cache.host_device
        new_keys, new_values = keys.to(host), values.to(host)
        if self.keys is None:
            self.keys, self.values = new_keys, new_values
        else:
            self.keys = torch.cat([self.keys, new_keys], dim=-2)
            self.values = torch.cat([self.values, new_values], dim=-2)
        self.release()
        return full_keys, full_values

    def seq_length(self) -> int:
        return 0 if self.keys is None else self.keys.shape[-2]

    def batch_size(self) -> int:
        return 0 if self.keys is None else self.keys.shape[0]

    def crop(self, length: int) -> None:
        if self.keys is not None:
            self.keys, self.values = self.keys[..., :length, :], self.values[..., :length, :]
        self.release()

    def reorder(self, index: torch.Tensor) -> None:
        if self.keys is not None:
            index = index.to(self.keys.device)
            self.keys, self.values = self.keys.index_select(0, index), self.values.index_select(0, index)
        self.release()


class OffloadedCache(Cache):
    """Keys/values on `host_device` (the CPU), prefetched one layer ahead of use."""

    def __init__(self, config=None, host_device: str | torch.device = "cpu", **unused):
        self.host_device = torch.device(host_device)
        self.compute_device: torch.device | None = None
        super().__init__(lambda layer_idx: OffloadedLayer(self, layer_idx))

    def prefetch_after(self, layer_idx: int) -> None:
        """Start copying the next layer while this one computes (its own update releases it)."""
        # devices, not device types: a host of "cpu:0" makes the prefetch path run (as no-op copies) on a CPU-only test
        if layer_idx + 1 < len(self.layers) and self.compute_device != self.host_device:
            self.layers[layer_idx + 1].prefetch(self.compute_device)


def is_out_of_memory(error: BaseException) -> bool:
    """True for allocator failures on any device (CUDA's OutOfMemoryError, the CPU allocator's RuntimeError)."""
    if isinstance(error, (torch.OutOfMemoryError, MemoryError)):
        return True
    text = str(error).lower()
    return isinstance(error, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)
