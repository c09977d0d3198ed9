"""A block-quantized linear layer whose input features are stored in another order (GPTQ's act-order).

GPTQ with `desc_act` quantizes the input features in order of decreasing activation size, so each group of
features sharing a scale is scattered over the feature axis and cuts the 32-value blocks the kernels read. At
load the features are reordered so that each group becomes contiguous (`input_order[j]` is the original
feature stored at column j); the layer then gathers its activations in that order and runs the block kernel:
x[..., input_order] @ W[:, input_order].T equals x @ W.T term by term, summed in another order.
Everything outside sees the original order: `weight` and `state_dict()` put the columns back.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .quantized_linear import QuantizedLinear, QuantizedWeight


@dataclass
class PermutedWeight(QuantizedWeight):
    """GGUF blocks of W[:, input_order] (int64 [in_features]): `dequantize()` gives W in its original order."""

    input_order: torch.Tensor

    def split(self, sizes, dim: int = 0) -> list[PermutedWeight]:
        return [PermutedWeight(part.blocks, part.ggml_type, part.in_features, self.input_order)
                for part in super().split(sizes, dim)]

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        stored = super().dequantize(dtype)
        return stored.index_select(1, self.input_order.argsort())


class PermutedLinear(QuantizedLinear):
    """QuantizedLinear over reordered input features; never fused with its neighbours (their order differs)."""

    def __init__(self, weight: PermutedWeight, bias: bool = False):
        super().__init__(weight, bias)
        self.register_buffer("input_order", weight.input_order, persistent=False)

    @property
    def weight(self) -> torch.Tensor:
        """The dequantized float32 weight with its columns in the original order (what state_dict() holds);
        `quantized_weight` stays in the stored order, the one the kernels multiply."""
        return self.quantized_weight.dequantize().index_select(1, self.input_order.argsort())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.index_select(-1, self.input_order))

    def rows(self, start: int, end: int) -> PermutedLinear:
        """A copy of output rows [start, end) (a tensor-parallel shard), in the same input order."""
        shard = PermutedLinear(PermutedWeight(self.blocks[start:end].clone(), self.ggml_type, self.columns,
                                              self.input_order), bias=self.bias is not None)
        if self.bias is not None:
            shard.bias = torch.nn.Parameter(self.bias.detach()[start:end].clone(), requires_grad=False)
        return shard
