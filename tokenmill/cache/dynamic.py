"""The dynamic cache: grows by concatenation, exact, the default kind."""

from __future__ import annotations

import torch

from .base import Cache, LayerCache


class DynamicLayer(LayerCache):
    def __init__(self):
        self.keys: torch.Tensor | None = None
        self.values: torch.Tensor | None = None

    def update(self, keys, values):
        if self.keys is None:
            self.keys, self.values = keys, values
        else:
            self.keys = torch.cat([self.keys, keys], dim=-2)
            self.values = torch.cat([self.values, values], dim=-2)
        return self.keys, self.values

    def seq_length(self) -> int:
        return 0 if self.keys is None else self.keys.shape[-2]

    def batch_size(self) -> int:
        return 0 if self.keys is None else self.keys.shape[0]

    def crop(self, length: int) -> None:
        if self.keys is not None:
            self.keys = self.keys[..., :length, :]
            self.values = self.values[..., :length, :]

    def reorder(self, index: torch.Tensor) -> None:
        if self.keys is not None:
            index = index.to(self.keys.device)
            self.keys = self.keys.index_select(0, index)
            self.values = self.values.index_select(0, index)


class DynamicCache(Cache):
    def __init__(self, config=None):
        super().__init__(lambda layer_idx: DynamicLayer())
