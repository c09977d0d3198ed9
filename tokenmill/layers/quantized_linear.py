"""Linear and embedding layers whose weights stay in GGUF block formats (Q4_0 … Q8_0, K-quants, IQ4).

The arithmetic is float32 on exactly the values a dequantizer produces; only the storage differs, so a
decode step reads ~4.5 bits per weight instead of 32 (see kernels/gguf_blocks.c). Under the execution policy's
precision "fast" a linear layer whose block type has an integer kernel (INT8_KERNEL_TYPES) quantizes its input
per 32 values to int8 digits and multiplies in integers instead (kernels/gguf_int8.c, or gguf_int8_packed.c over
the weight repacked once by Int8Packing); `set_precision` below is how the model applies the policy.
`state_dict()` yields the dequantized float weights under the usual names, so saving and converting see an
ordinary model.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from .. import kernels
from ..execution.calibration import DEFAULT_DENSE_ABOVE, DEFAULT_RULE, GemmPlan, GemmRule, Runner, shape_key
from ..execution.policy import PRECISIONS
from ..kernels.gguf_types import has_int8_kernel
from ..kernels.system import ONEDNN_LINEAR

# above this many activation rows (a long prefill) one dense matmul over the dequantized weight is faster: the
# default rule, which the execution policy's GemmPlan replaces per shape with one measured on this machine
DENSE_ABOVE_ROWS = DEFAULT_DENSE_ABOVE
# precision "fast": int8 digits per activation (kernels.quantize_int8). One digit (llama.cpp's Q8_0 activations)
# kept SmolLM2 Q4_1's teacher-forced top-1 at 96.3% of float32's; two reach the docs' bound (docs/performance.md)
ACTIVATION_DIGITS = 2


@dataclass
class QuantizedWeight:
    """A [rows, in_features] matrix kept as the GGUF bytes of each row (`blocks`: uint8 [rows, row_bytes])."""

    blocks: torch.Tensor
    ggml_type: int
    in_features: int

    @property
    def shape(self) -> torch.Size:
        return torch.Size((self.blocks.shape[0], self.in_features))

    def split(self, sizes, dim: int = 0) -> list[QuantizedWeight]:
        if dim != 0:
            raise ValueError("a quantized weight can only be split into groups of rows")
        return [QuantizedWeight(part, self.ggml_type, self.in_features) for part in self.blocks.split(sizes)]

    def chunk(self, count: int, dim: int = 0) -> list[QuantizedWeight]:
        return self.split(self.shape[0] // count, dim)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return kernels.dequantize_rows(self.blocks, self.ggml_type, self.in_features).to(dtype)


_scratch = threading.local()  # per thread: generate() may run in several threads at once
SCRATCH_MAX_FLOATS = 8 << 20  # 32 MiB, about a last-level cache: a larger weight (an output embedding) gets its own


def _dequantized_in_scratch(weight: QuantizedWeight) -> torch.Tensor:
    """The weight dequantized into this thread's reused buffer, valid until the thread's next call. One buffer
    (7 MB for SmolLM2's fused gate/up) stays in the last-level cache and needs no fresh pages: a 512-token
    prefill ran ~9% faster than with a new tensor per matmul."""
    need = weight.shape.numel()
    if need > SCRATCH_MAX_FLOATS:
        return weight.dequantize()
    buffer = getattr(_scratch, "buffer", None)
    if buffer is None or buffer.numel() < need:
        buffer = _scratch.buffer = torch.empty(need, dtype=torch.float32)
    return kernels.dequantize_rows(weight.blocks, weight.ggml_type, weight.in_features,
                                   out=buffer[:need].view(weight.shape))


def dense_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                 backend: str = DEFAULT_RULE.backend) -> torch.Tensor:
    """F.linear on float32 CPU tensors through oneDNN (bundled with torch; backend "onednn") or torch's own
    GEMM (backend "torch": MKL's sgemm where torch has MKL). On the AMD CPUs here oneDNN runs at about twice
    MKL's speed (512 x 576 x 3072: ~430 against ~175 GFLOP/s on 2 cores); on an Intel host they were even,
    hence the per-machine choice (execution/calibration.py). The sums are ordered differently from MKL's, as the
    GGUF kernels' already are; where oneDNN cannot serve (autograd, another dtype), F.linear."""
    if backend == "onednn" and ONEDNN_LINEAR and kernels.serves_float32(*(t for t in (x, weight, bias)
                                                                          if t is not None)):
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
    return F.linear(x, weight, bias)


class Int8Packing:
    """precision "fast": a weight's blocks repacked once into the integer kernel's interleaved layout
    (kernels.pack_int8, AVX-512 VNNI builds; the same size as the blocks), kept while the layer runs in fast
    mode and the blocks stay the same tensor. Exact mode reads the GGUF blocks and drops the packed copy."""

    __slots__ = ("source", "packed")

    def __init__(self):
        self.source: torch.Tensor | None = None
        self.packed: torch.Tensor | None = None  # None also where this build has no packed kernel

    def of(self, weight: QuantizedWeight) -> torch.Tensor | None:
        if self.source is not weight.blocks:
            packs = kernels.int8_packs(weight.ggml_type)
            self.packed = kernels.pack_int8(weight.blocks, weight.ggml_type, weight.in_features) if packs else None
            self.source = weight.blocks
        return self.packed

    def drop(self) -> None:
        self.source = self.packed = None


def _kernel_matmul(x: torch.Tensor, weight: QuantizedWeight, bias: torch.Tensor | None,
                   packing: Int8Packing | None = None, rule: GemmRule = DEFAULT_RULE) -> torch.Tensor:
    """x @ W.T (+ bias) in float32, returned in x's dtype (no conversions at all for float32 input).
    packing (precision "fast"): x quantized to int8 per 32 values and integer block dot products, from the
    packed layout where the build has one, up to `rule.dense_above` rows; past it the weight is dequantized and
    multiplied by `rule.backend`'s float32 GEMM in either precision."""
    x32 = x if x.dtype == torch.float32 else x.float()
    rows = x32.numel() // weight.in_features
    if rule.dense_above is not None and rows > rule.dense_above:
        out = dense_linear(x32, _dequantized_in_scratch(weight), bias, rule.backend)
    else:
        if packing is not None:
            out = kernels.matmul_int8(x32, weight.blocks, weight.ggml_type, weight.in_features, ACTIVATION_DIGITS,
                                      packing.of(weight))
        else:
            out = kernels.matmul(x32, weight.blocks, weight.ggml_type, weight.in_features)
        if bias is not None:
            out = out + bias
    return out if out.dtype == x.dtype else out.to(x.dtype)


class BlockStorage(nn.Module):
    """What quantized layers share: the blocks buffer, and the float weight they stand for."""

    def __init__(self, weight: QuantizedWeight):
        super().__init__()
        self.ggml_type = weight.ggml_type
        self.columns = weight.in_features
        self.register_buffer("blocks", weight.blocks, persistent=False)

    @property
    def quantized_weight(self) -> QuantizedWeight:
        return QuantizedWeight(self.blocks, self.ggml_type, self.columns)

    @property
    def weight(self) -> torch.Tensor:
        """The dequantized float32 weight (computed on each access: for inspection, not for the hot path)."""
        return self.quantized_weight.dequantize()

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        destination[prefix + "weight"] = self.weight
        for name, parameter in self._parameters.items():
            if parameter is not None:
                destination[prefix + name] = parameter


class QuantizedLinear(BlockStorage):
    gemm_rule = DEFAULT_RULE  # when to switch to a dense GEMM: the policy's GemmPlan (set_gemm_plan)

    def __init__(self, weight: QuantizedWeight, bias: bool = False):
        super().__init__(weight)
        self.in_features, self.out_features = weight.in_features, weight.shape[0]
        self.bias = nn.Parameter(torch.empty(self.out_features, device="meta"), requires_grad=False) if bias else None
        self.integer_activations = False  # precision "fast" on a type with an int8 kernel (set_precision)
        self.int8_packing = Int8Packing()

    def set_precision(self, precision: str) -> bool:
        """Compute in `precision` ("exact" or "fast"); True if this layer now takes int8 activations (fast mode
        on a block type in INT8_KERNEL_TYPES whose kernel is built), False if it computes in float32."""
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        self.integer_activations = (precision == "fast" and has_int8_kernel(self.ggml_type)
                                    and self.in_features % 32 == 0 and kernels.int8_supports(self.ggml_type))
        if not self.integer_activations:
            self.int8_packing.drop()
        return self.integer_activations

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _kernel_matmul(x, self.quantized_weight, None if self.bias is None else self.bias.float(),
                              self.int8_packing if self.integer_activations else None, self.gemm_rule)

    def extra_repr(self) -> str:
        fast = ", int8 activations" if self.integer_activations else ""
        return (f"in_features={self.in_features}, out_features={self.out_features}, ggml_type={self.ggml_type}"
                + fast)


class QuantizedEmbedding(BlockStorage):
    def __init__(self, weight: QuantizedWeight):
        super().__init__(weight)
        self.num_embeddings, self.embedding_dim = weight.shape

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        rows = kernels.dequantize_rows(self.blocks, self.ggml_type, self.embedding_dim, ids)
        return rows.view(*ids.shape, self.embedding_dim)

    def as_linear(self) -> QuantizedLinear:
        """A tied output head reading the same blocks."""
        return QuantizedLinear(self.quantized_weight)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, ggml_type={self.ggml_type}"


class QuantizedFusedProjection:
    """Several QuantizedLinear of one type reading the same input, as one kernel call over stacked rows.

    As with the float FusedProjection, each layer's blocks become row-views of the stacked buffer: no memory is
    added and each layer still works alone.
    """

    gemm_rule = DEFAULT_RULE  # its stacked shape's rule (set_gemm_plan)

    def __init__(self, linears: list[QuantizedLinear]):
        self.linears = linears
        self.weight = QuantizedWeight(torch.cat([linear.blocks for linear in linears]), linears[0].ggml_type,
                                      linears[0].in_features)
        for linear, rows in zip(linears, self.weight.blocks.split([linear.out_features for linear in linears])):
            linear.blocks = rows
        has_bias = linears[0].bias is not None
        self.bias = torch.cat([linear.bias.float() for linear in linears]) if has_bias else None
        self._stacked = [linear.blocks for linear in linears]  # the row views made above
        self.int8_packing = Int8Packing()  # the stacked rows' packed layout (precision "fast")

    @staticmethod
    def fusable(linears: list[nn.Module]) -> bool:
        """Plain QuantizedLinear only: a subclass (a PermutedLinear) reads its input in its own order."""
        first = linears[0]
        return all(type(linear) is QuantizedLinear and linear.ggml_type == first.ggml_type
                   and linear.in_features == first.in_features and linear.blocks.device == first.blocks.device
                   and (linear.bias is None) == (first.bias is None) for linear in linears)

    def is_current(self) -> bool:
        # identity, not data pointers: ~20x cheaper per call; a replaced buffer (`.to()`, assign) is a new tensor
        return all(linear._buffers["blocks"] is rows for linear, rows in zip(self.linears, self._stacked))

    def accepts(self, x: torch.Tensor) -> bool:
        return True  # one kernel pass over stacked rows is never slower than several

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        # the layers share one type, so one precision: the first one's (set_precision sets them all alike)
        if not self.linears[0].integer_activations:
            self.int8_packing.drop()
            return _kernel_matmul(x, self.weight, self.bias, None, self.gemm_rule)
        return _kernel_matmul(x, self.weight, self.bias, self.int8_packing, self.gemm_rule)


def set_precision(model: nn.Module, precision: str) -> int:
    """Every quantized linear layer of `model` computing in `precision`; the number now on int8 activations."""
    return sum(module.set_precision(precision) for module in model.modules() if isinstance(module, QuantizedLinear))


def _block_matmuls(model: nn.Module) -> list[tuple[object, QuantizedWeight, bool]]:
    """(layer, weight, int8 activations) for each block matmul a forward runs: the fused projections (held by
    attention and MLP modules as attributes) and the quantized linears not fused into one."""
    fused = [value for module in model.modules() for value in vars(module).values()
             if isinstance(value, QuantizedFusedProjection)]
    members = {id(linear) for projection in fused for linear in projection.linears}
    found = [(projection, projection.weight, projection.linears[0].integer_activations) for projection in fused]
    return found + [(module, module.quantized_weight, module.integer_activations) for module in model.modules()
                    if isinstance(module, QuantizedLinear) and id(module) not in members]


def _key(weight: QuantizedWeight, integer: bool) -> str:
    return shape_key(weight.shape[0], weight.in_features, weight.ggml_type, integer)


def gemm_runners(model: nn.Module) -> dict[str, tuple[int, Runner]]:
    """{shape key: (in_features, run(backend, x))} over `model`'s block matmuls, the most used shapes first:
    what execution/calibration.py times, running exactly the dispatch's code paths."""
    uses, runners = {}, {}
    for _, weight, integer in _block_matmuls(model):
        key = _key(weight, integer)
        uses[key] = uses.get(key, 0) + 1
        if key not in runners:
            runners[key] = (weight.in_features, _runner(weight, integer))
    # the shapes every layer runs first; an output head (one per model, one row per prefill) last
    return {key: runners[key] for key in sorted(runners, key=lambda key: -uses[key])}


def _runner(weight: QuantizedWeight, integer: bool) -> Runner:
    packing = Int8Packing() if integer else None  # packed on the first (warm-up) call, as the layer does

    def run(backend: str, x: torch.Tensor) -> torch.Tensor:
        rule = GemmRule(None, DEFAULT_RULE.backend) if backend == "block" else GemmRule(0, backend)
        return _kernel_matmul(x, weight, None, packing, rule)
    return run


def set_gemm_plan(model: nn.Module, plan: GemmPlan | None) -> None:
    """Each block matmul of `model` switching to a dense GEMM as `plan` says for its shape (None: the default)."""
    for layer, weight, integer in _block_matmuls(model):
        rule = DEFAULT_RULE if plan is None else plan.rule(_key(weight, integer))
        if rule == DEFAULT_RULE:
            layer.__dict__.pop("gemm_rule", None)
        else:
            layer.gemm_rule = rule


def is_quantized(module: nn.Module) -> bool:
    return isinstance(module, BlockStorage)


def dense_copy(module: nn.Module) -> nn.Module:
    """The float32 nn.Linear / nn.Embedding equivalent of a quantized layer."""
    if isinstance(module, QuantizedEmbedding):
        return nn.Embedding.from_pretrained(module.weight, freeze=True)
    linear = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None,
                       device=module.blocks.device)
    linear.weight = nn.Parameter(module.weight, requires_grad=False)
    if module.bias is not None:
        linear.bias = nn.Parameter(module.bias.detach().float(), requires_grad=False)
    return linear.requires_grad_(False)
