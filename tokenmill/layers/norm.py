"""Normalization layers; statistics are computed in float32 whatever the activation dtype."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .. import kernels


class RMSNorm(nn.Module):
    """RMSNorm; `unit_offset=True` scales by (1 + weight) as Gemma stores it."""

    def __init__(self, dim: int, eps: float = 1e-6, unit_offset: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(dim) if unit_offset else torch.ones(dim))
        self.eps = eps
        self.unit_offset = unit_offset
        # set for models running the GGUF kernels (see use_native_kernels in models/base.py); off, the arithmetic is
        # transformers' bit for bit, which the kernel's double-precision sum is not
        self.native_kernel = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        input_dtype = x.dtype
        if self.native_kernel and kernels.rms_norm_applies(x, self.weight):  # one C call, not ~6 ATen ops
            return kernels.rms_norm(x, self.weight, self.eps, self.unit_offset)
        if input_dtype == torch.float32:  # one fused op; the same arithmetic when nothing needs rounding between
            weight = 1.0 + self.weight if self.unit_offset else self.weight
            return F.rms_norm(x, (x.shape[-1],), weight, self.eps)
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        if self.unit_offset:
            return (normed * (1.0 + self.weight.float())).to(input_dtype)
        return self.weight * normed.to(input_dtype)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}, unit_offset={self.unit_offset}"
