"""The vocabulary-parallel embedding and output head of a tensor-parallel model.

Each rank holds a contiguous range of vocabulary rows (float or GGUF blocks). The embedding looks up the ids in
its range, zeroes the others and sums over the ranks (exact: every id has one non-zero contribution); the head
computes its range's logits and gathers the ranges in order, so every rank ends with the same full logits.
"""

from __future__ import annotations

import torch
from torch import nn

from ..execution.parallel import Collectives


class VocabParallelEmbedding(nn.Module):
    """The rows [start, end) of an embedding; `local` is an nn.Embedding or QuantizedEmbedding over them."""

    def __init__(self, local: nn.Module, start: int, end: int, num_embeddings: int, collectives: Collectives):
        super().__init__()
        self.local = local
        self.start, self.end = start, end
        self.num_embeddings = num_embeddings
        self.embedding_dim = local.embedding_dim
        self.collectives = collectives

    @property
    def weight(self) -> torch.Tensor:
        """This rank's rows (the tied head reads them)."""
        return self.local.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        mine = (ids >= self.start) & (ids < self.end)
        rows = self.local(torch.where(mine, ids - self.start, 0))
        rows = rows * mine.unsqueeze(-1).to(rows.dtype)
        return self.collectives.all_reduce(rows)

    def extra_repr(self) -> str:
        return f"rows [{self.start}, {self.end}) of {self.num_embeddings}, {self.embedding_dim}"


class VocabParallelHead(nn.Module):
    """The logits of every rank's vocabulary range, concatenated; `local` maps hidden → this rank's range."""

    def __init__(self, local: nn.Module, widths: list[int], collectives: Collectives):
        super().__init__()
        self.local = local
        self.widths = widths
        self.in_features, self.out_features = local.in_features, sum(widths)
        self.collectives = collectives

    @property
    def weight(self) -> torch.Tensor:
        return self.local.weight

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.collectives.all_gather_last(self.local(hidden), self.widths)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, ranks={len(self.widths)}"
