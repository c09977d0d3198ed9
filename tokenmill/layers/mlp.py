"""Feed-forward blocks."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..execution.ops import TORCH_OPS, TorchOps
from .lora import NO_LORA, LoraBatch
from .quantized_linear import QuantizedFusedProjection

_ACTIVATIONS = {
    "silu": F.silu,
    "swish": F.silu,
    "gelu": F.gelu,
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_fast": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
}


def activation(name: str):
    try:
        return _ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"unsupported activation {name!r}; supported: {', '.join(sorted(_ACTIVATIONS))}") from None


class FusedProjection:
    """Several nn.Linear reading the same input, run as one matmul.

    Their weights (and biases) become row-views of one matrix, so parameter names, loading and saving are
    unchanged and no memory is added. If a parameter is later replaced (`.to()`, `load_state_dict(assign=True)`)
    or needs gradients, `is_current()` turns False and the caller goes back to the separate projections.
    """

    def __init__(self, linears: list[nn.Linear]):
        self.linears = linears
        self.sizes = [linear.out_features for linear in linears]
        self.weight = torch.cat([linear.weight.detach() for linear in linears])
        has_bias = linears[0].bias is not None
        self.bias = torch.cat([linear.bias.detach() for linear in linears]) if has_bias else None
        for index, (linear, rows) in enumerate(zip(linears, self.weight.split(self.sizes))):
            linear.weight = nn.Parameter(rows, requires_grad=False)
            if has_bias:
                linear.bias = nn.Parameter(self.bias.split(self.sizes)[index], requires_grad=False)
        self._pointers = [linear.weight.data_ptr() for linear in linears]

    @staticmethod
    def fusable(linears: list[nn.Linear]) -> bool:
        first = linears[0].weight
        return (first.device.type != "meta" and all(
            linear.weight.dtype == first.dtype and linear.weight.device == first.device
            and (linear.bias is None) == (linears[0].bias is None) for linear in linears))

    def is_current(self) -> bool:
        first = self.linears[0].weight
        return not first.requires_grad and all(
            linear.weight.data_ptr() == pointer for linear, pointer in zip(self.linears, self._pointers))

    def accepts(self, x: torch.Tensor) -> bool:
        # one token row only: at 8+ rows the wider matmul ran ~20% slower on CPU (MKL, 2 threads) and the
        # chunked outputs make the following elementwise ops strided
        return x.numel() == x.shape[-1]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


def fuse(linears: list[nn.Module]):
    """A FusedProjection (float weights) or QuantizedFusedProjection (GGUF blocks), or None if they differ."""
    if QuantizedFusedProjection.fusable(linears):
        return QuantizedFusedProjection(linears)
    if all(type(linear) is nn.Linear for linear in linears) and FusedProjection.fusable(linears):
        return FusedProjection(linears)
    return None


class GatedMLP(nn.Module):
    """down(act(gate(x)) * up(x)): SwiGLU with silu, GeGLU with gelu."""

    lora_targets = ("gate_proj", "up_proj", "down_proj")  # the projections forward() runs through `lora`

    def __init__(self, hidden_size: int, intermediate_size: int, act: str = "silu", bias: bool = False):
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=bias)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=bias)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=bias)
        self.act = activation(act)
        self._gate_up: FusedProjection | None = None

    def fuse_projections(self) -> None:
        """One [gate|up] matmul per call instead of two (see FusedProjection)."""
        self._gate_up = fuse([self.gate_proj, self.up_proj])

    def forward(self, x: torch.Tensor, ops: TorchOps = TORCH_OPS, lora: LoraBatch = NO_LORA) -> torch.Tensor:
        fused = self._gate_up
        if fused is not None and fused.accepts(x) and fused.is_current():
            gate_up = lora.project_fused(fused, x)
            if self.act is F.silu:
                return ops.all_reduce(lora.project(self.down_proj, ops.silu_mul(gate_up)))
            gate, up = gate_up.chunk(2, dim=-1)
            return ops.all_reduce(lora.project(self.down_proj, self.act(gate) * up))
        gated = self.act(lora.project(self.gate_proj, x)) * lora.project(self.up_proj, x)
        # tensor parallelism: down_proj holds this rank's intermediate columns, the ranks' sums add up
        return ops.all_reduce(lora.project(self.down_proj, gated))
