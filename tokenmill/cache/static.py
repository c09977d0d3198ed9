"""The static cache: keys/values preallocated to `max_cache_len` slots, written in place, shapes never change.

Attention always sees every slot; the unused ones are masked out through `visible_mask`. Slot i holds
position i, so the model's mask over the positions seen is padded with False up to `max_cache_len`.
"""

from __future__ import annotations

import torch

from .base import Cache, LayerCache, causal_over_seen


class StaticLayer(LayerCache):
    def __init__(self, max_cache_len: int, batch_size: int | None = None, dtype: torch.dtype | None = None,
                 device: torch.device | str | None = None):
        if max_cache_len is None or max_cache_len <= 0:
            raise ValueError(f"a static cache needs a positive max_cache_len, got {max_cache_len!r}")
        self.max_cache_len = int(max_cache_len)
        self.batch, self.dtype, self.device = batch_size, dtype, device
        self.keys: torch.Tensor | None = None
        self.values: torch.Tensor | None = None
        self.filled: torch.Tensor | None = None  # [max_cache_len] bool: which slots hold a position
        self.length = 0
        # a captured decode step writes at this device tensor's slot [1], and its length advances outside the
        # graph (StaticCache.write_at / advance): the update then reads no Python state
        self.position: torch.Tensor | None = None

    def _allocate(self, keys: torch.Tensor) -> None:
        batch, kv_heads, _, head_dim = keys.shape
        if self.batch is not None and self.batch != batch:
            raise ValueError(f"static cache was built for batch size {self.batch}, got keys for {batch} rows")
        dtype, device = self.dtype or keys.dtype, self.device or keys.device
        shape = (batch, kv_heads, self.max_cache_len, head_dim)
        self.keys = torch.zeros(shape, dtype=dtype, device=device)
        self.values = torch.zeros(shape, dtype=dtype, device=device)
        self.filled = torch.zeros(self.max_cache_len, dtype=torch.bool, device=device)

    def update(self, keys, values):
        if self.keys is None:
            self._allocate(keys)
        if self.position is not None:
            self.keys.index_copy_(2, self.position, keys.to(self.keys.dtype))
            self.values.index_copy_(2, self.position, values.to(self.values.dtype))
            self.filled.index_fill_(0, self.position, True)
            return self.keys, self.values
        start, count = self.length, keys.shape[-2]
        if start + count > self.max_cache_len:
            raise ValueError(
                f"static cache is full: {start} positions stored, {count} more do not fit in "
                f"max_cache_len={self.max_cache_len}; build it with a larger max_cache_len"
            )
        self.keys[:, :, start:start + count] = keys
        self.values[:, :, start:start + count] = values
        self.filled[start:start + count] = True
        self.length = start + count
        return self.keys, self.values

    def visible_mask(self, allowed, is_causal, query_length):
        if allowed is None and query_length == 1:
            return self.filled[None, None, None, :], False  # one query sees every filled slot: no allocation
        past = self.length - query_length
        seen = causal_over_seen(allowed, past, query_length, self.keys.device)
        padded = seen.new_zeros(*seen.shape[:-1], self.max_cache_len)
        padded[..., :self.length] = seen[..., -self.length:]
        return padded, False

    def seq_length(self) -> int:
        return self.length

    def batch_size(self) -> int:
        return 0 if self.keys is None else self.keys.shape[0]

    def crop(self, length: int) -> None:
        self.length = min(self.length, max(0, length))
        if self.filled is not None:
            self.filled[self.length:] = False

    def reorder(self, index: torch.Tensor) -> None:
        if self.keys is not None:
            index = index.to(self.keys.device)
            self.keys = self.keys.index_select(0, index)
            self.values = self.values.index_select(0, index)
            self.batch = self.keys.shape[0]

    def reset(self) -> None:
        self.crop(0)


class StaticCache(Cache):
    """transformers' StaticCache: `StaticCache(config, max_cache_len=...)`; buffers are made on first use."""

    def __init__(self, config=None, max_cache_len: int | None = None, batch_size: int | None = None,
                 dtype: torch.dtype | None = None, device: torch.device | str | None = None, **unused):
        if max_cache_len is None and config is not None:
            max_cache_len = getattr(config, "max_position_embeddings", None)
        if max_cache_len is None:
            raise ValueError("StaticCache needs max_cache_len (or a config with max_position_embeddings)")
        self.max_cache_len = int(max_cache_len)
        super().__init__(lambda layer_idx: StaticLayer(self.max_cache_len, batch_size, dtype, device))

    def reset(self) -> None:
        for layer in self.layers:
            layer.reset()

    def write_at(self, position: torch.Tensor | None) -> None:
        """Every layer writes one token at `position` (a [1] long tensor on the cache's device, refilled before
        each captured step), or, with None, at its length again."""
        for layer in self.layers:
            layer.position = position

    def advance(self, count: int = 1) -> None:
        """Count `count` more positions as stored (what update() does itself outside a captured step)."""
        for layer in self.layers:
            layer.length += count
