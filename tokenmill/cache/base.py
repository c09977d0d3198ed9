"""The KV-cache protocol: a Cache is a list of per-layer caches, passed to forward() as an argument.

Every kind (dynamic, static, quantized, offloaded, sliding, sink, paged) implements LayerCache; beam search
reorders through `reorder`, speculative decoding crops through `crop`, offloading prefetches per layer.
"""

from __future__ import annotations

from typing import Callable

import torch


class LayerCache:
    """Keys/values of one attention layer, laid out [batch, kv_heads, seq, head_dim]."""

    def update(self, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append this step's keys/values; return what attention should see."""
        raise NotImplementedError

    def update_slots(self, keys: torch.Tensor,
                     values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """update(), for attention that can read keys by slot: (keys, values, slots). slots None: the tensors
        are [batch, kv_heads, columns, dim] as update() returns; else [batch, columns] rows of pool tensors laid
        out [slot, kv_heads, dim] (the paged cache, which then makes no gathered copy)."""
        keys, values = self.update(keys, values)
        return keys, values, None

    def seq_length(self) -> int:
        """Tokens seen so far (positions), whether or not all are still stored."""
        raise NotImplementedError

    def visible_columns(self, mask: torch.Tensor) -> torch.Tensor:
        """Given a mask over every position seen [.., q, seen], keep the columns of the stored entries."""
        return mask

    def visible_mask(self, allowed: torch.Tensor | None, is_causal: bool,
                     query_length: int) -> tuple[torch.Tensor | None, bool]:
        """(allowed, is_causal) over the keys the last update() returned; called right after update().

        Exact kinds return keys for every position seen, so the model's mask applies as is. Kinds that store
        fewer columns (windows) or more (preallocated slots) override this; `causal_over_seen` helps.
        """
        if allowed is None:
            return None, is_causal
        return self.visible_columns(allowed), False

    def nbytes(self) -> int:
        """Bytes held by this layer's stored keys/values (for memory reports)."""
        return sum(t.numel() * t.element_size() for t in self.tensors())

    def tensors(self) -> list[torch.Tensor]:
        return [t for t in (getattr(self, "keys", None), getattr(self, "values", None)) if t is not None]

    def crop(self, length: int) -> None:
        raise NotImplementedError(f"{type(self).__name__} cannot be cropped")

    def reorder(self, index: torch.Tensor) -> None:
        """Select/reorder batch rows (beam search, finished rows)."""
        raise NotImplementedError(f"{type(self).__name__} cannot be reordered")

    def prefetch(self) -> None:
        """Bring this layer's tensors to the compute device ahead of use (offloaded kinds)."""

    def release(self) -> None:
        """Send this layer's tensors back to the host after use (offloaded kinds)."""


def causal_over_seen(allowed: torch.Tensor | None, past_length: int, query_length: int,
                     device: torch.device) -> torch.Tensor:
    """The model's mask over every position seen [b|1, 1, q, past + q]; a None mask means plain causal."""
    if allowed is not None:
        return allowed
    query_positions = torch.arange(past_length, past_length + query_length, device=device)[:, None]
    key_positions = torch.arange(past_length + query_length, device=device)[None, :]
    return (key_positions <= query_positions)[None, None]


class Cache:
    """A per-layer list of LayerCache objects; layers are created lazily by `layer_factory(layer_idx)`."""

    def __init__(self, layer_factory: Callable[[int], LayerCache]):
        self._layer_factory = layer_factory
        self.layers: list[LayerCache] = []

    def layer(self, layer_idx: int) -> LayerCache:
        while len(self.layers) <= layer_idx:
            self.layers.append(self._layer_factory(len(self.layers)))
        return self.layers[layer_idx]

    def update(self, keys: torch.Tensor, values: torch.Tensor, layer_idx: int):
        return self.layer(layer_idx).update(keys, values)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        if layer_idx >= len(self.layers):
            return 0
        return self.layers[layer_idx].seq_length()

    def __len__(self) -> int:
        return len(self.layers)

    def crop(self, length: int) -> None:
        """Forget every position from `length` on (negative: drop that many from the end)."""
        if length < 0:
            length = self.get_seq_length() + length
        for layer in self.layers:
            layer.crop(length)

    def reorder_cache(self, index: torch.Tensor) -> None:
        for layer in self.layers:
            layer.reorder(index)

    def batch_select_indices(self, index: torch.Tensor) -> None:
        self.reorder_cache(index)

    def nbytes(self) -> int:
        """Bytes of keys/values stored over every layer."""
        return sum(layer.nbytes() for layer in self.layers)

    def batch_repeat_interleave(self, repeats: int) -> None:
        if not self.layers:
            return
        rows = self.layers[0].batch_size()
        self.reorder_cache(torch.arange(rows).repeat_interleave(repeats))
