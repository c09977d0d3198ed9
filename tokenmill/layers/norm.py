"""Normalization layers; statistics are computed in float32 whatever the activation dtype."""

from __future__ import annotations

import torch
from torch import nn

from ..execution.ops import TORCH_OPS, TorchOps


class RMSNorm(nn.Module):
    """RMSNorm; `unit_offset=True` scales by (1 + weight) as Gemma stores it."""

    def __init__(self, dim: int, eps: float = 1e-6, unit_offset: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(dim) if unit_offset else torch.ones(dim))
        self.eps = eps
        self.unit_offset = unit_offset

    def forward(self, x: torch.Tensor, ops: TorchOps = TORCH_OPS) -> torch.Tensor:
        return ops.rms_norm(x, self.weight, self.eps, self.unit_offset)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}, unit_offset={self.unit_offset}"


class LayerNorm(nn.LayerNorm):
    """nn.LayerNorm taking the kernel set like every norm a decoder block calls (no kernel replaces it)."""

    def forward(self, x: torch.Tensor, ops: TorchOps = TORCH_OPS) -> torch.Tensor:
        return super().forward(x)
