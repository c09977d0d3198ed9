"""The kernel sets a forward pass runs through, as objects handed down the forward call.

`TorchOps` is ATen only (transformers' arithmetic bit for bit, any device and dtype). `ExactOps` adds the C
kernels that reproduce ATen bit for bit (rotary, greedy decoding's argmax). `NativeOps` adds the C kernels that reorder sums (RMSNorm,
SwiGLU, attention read straight from the cache), chosen with the GGUF block kernels, whose matmuls already sum
in their own order. Each native method checks the call's shapes and strides and falls back to the ATen arithmetic
where the kernel cannot serve; which set runs is the execution policy's decision, never a layer's.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from .. import kernels
from .parallel import SINGLE


class TorchOps:
    """ATen only."""

    name = "torch"
    native_attention = False
    collectives = SINGLE  # tensor parallelism: the policy sets its ranks' group on its own instance

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        """The sum of a row-parallel projection's partial outputs over the ranks (one process: x itself)."""
        return self.collectives.all_reduce(x)

    def rms_norm(self, x: torch.Tensor, weight: torch.Tensor, eps: float, unit_offset: bool) -> torch.Tensor:
        """x / rms(x) * weight (Gemma: * (1 + weight)), statistics in float32 whatever the activation dtype."""
        input_dtype = x.dtype
        if input_dtype == torch.float32:  # one fused op; the same arithmetic when nothing needs rounding between
            return F.rms_norm(x, (x.shape[-1],), 1.0 + weight if unit_offset else weight, eps)
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
        if unit_offset:
            return (normed * (1.0 + weight.float())).to(input_dtype)
        return weight * normed.to(input_dtype)

    def rotary(self, x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
        """x: [batch, heads, seq, head_dim]; cos/signed_sin: [batch, 1, seq, rotary_dim] (rotary_dim may be
        < head_dim). Equals x * cos + rotate_half(x) * sin (the usual form), bit for bit."""
        rotary_dim = cos.shape[-1]
        if rotary_dim == x.shape[-1]:
            return x * cos + x.roll(rotary_dim // 2, dims=-1) * signed_sin
        rotated, passthrough = x[..., :rotary_dim], x[..., rotary_dim:]
        return torch.cat((rotated * cos + rotated.roll(rotary_dim // 2, dims=-1) * signed_sin, passthrough), dim=-1)

    def silu_mul(self, gate_up: torch.Tensor) -> torch.Tensor:
        """silu(gate) * up for [..., 2 * inter] = [gate | up] (a fused projection's output)."""
        gate, up = gate_up.chunk(2, dim=-1)
        return F.silu(gate) * up

    def argmax_applies(self, rows: torch.Tensor) -> bool:
        """Whether `argmax` below is one vectorized pass here (else generation's block-maxima path is faster)."""
        return False

    def argmax(self, rows: torch.Tensor) -> torch.Tensor:
        """rows.argmax(-1): the first maximum, NaN counting as the largest."""
        return torch.argmax(rows, -1)

    def attends(self, q: torch.Tensor, keys: torch.Tensor, softcap: float | None) -> bool:
        """Whether `attention` below serves this call (else the layer runs SDPA or eager attention)."""
        return False

    def attention(self, q, keys, values, allowed, is_causal, scale, slots=None) -> torch.Tensor:
        raise NotImplementedError(f"the {self.name} kernel set has no attention kernel; check attends() first")

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class ExactOps(TorchOps):
    """ATen plus the C kernels that give the same bits (rotary: one pass instead of a roll, two products and a
    sum; argmax: one vectorized pass instead of torch's scalar CPU loop)."""

    name = "exact"

    def argmax_applies(self, rows: torch.Tensor) -> bool:
        return kernels.argmax_applies(rows)

    def argmax(self, rows: torch.Tensor) -> torch.Tensor:
        if kernels.argmax_applies(rows):  # the same indices as ATen's, in one vectorized pass
            return kernels.argmax(rows)
        return super().argmax(rows)

    def rotary(self, x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
        if kernels.rotary_applies(x, cos, signed_sin):
            return kernels.rotary(x, cos, signed_sin)
        return super().rotary(x, cos, signed_sin)


class NativeOps(ExactOps):
    """Every C kernel: RMSNorm, SwiGLU (one call instead of several ATen ops) and, if `native_attention`,
    attention read from the cache in place (~1, ~0.5 and ~5 ms of a SmolLM2 batch-8 decode step)."""

    name = "native"

    def __init__(self, native_attention: bool = True):
        self.native_attention = native_attention

    def rms_norm(self, x: torch.Tensor, weight: torch.Tensor, eps: float, unit_offset: bool) -> torch.Tensor:
        if kernels.rms_norm_applies(x, weight):
            return kernels.rms_norm(x, weight, eps, unit_offset)
        return super().rms_norm(x, weight, eps, unit_offset)

    def silu_mul(self, gate_up: torch.Tensor) -> torch.Tensor:
        if gate_up.is_contiguous() and kernels.serves_float32(gate_up):
            return kernels.silu_mul(gate_up)
        return super().silu_mul(gate_up)

    def attends(self, q: torch.Tensor, keys: torch.Tensor, softcap: float | None) -> bool:
        return self.native_attention and kernels.attention_applies(q, keys, softcap)

    def attention(self, q, keys, values, allowed, is_causal, scale, slots=None) -> torch.Tensor:
        """softmax(scale * q k^T) v as [batch, queries, heads * head_dim]; see kernels.attention."""
        return kernels.attention(q, keys, values, allowed, is_causal, scale, slots)

    def __repr__(self) -> str:
        return f"NativeOps(native_attention={self.native_attention})"


class TritonOps(TorchOps):
    """ATen plus the Triton kernels on CUDA: decode attention read straight from the cache (the paged pool
    through its slot tables), grouped kv heads loaded once, prefills staying with SDPA's flash kernels; RMSNorm,
    rotary and silu(gate) * up each one launch instead of several element-wise passes."""

    name = "triton"

    def __init__(self, native_attention: bool = True):
        self.native_attention = native_attention

    def rms_norm(self, x: torch.Tensor, weight: torch.Tensor, eps: float, unit_offset: bool) -> torch.Tensor:
        from ..kernels import triton_fused

        if triton_fused.rms_norm_applies(x, weight):
            return triton_fused.rms_norm(x, weight, eps, unit_offset)
        return super().rms_norm(x, weight, eps, unit_offset)

    def rotary(self, x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
        from ..kernels import triton_fused

        if triton_fused.rotary_applies(x, cos, signed_sin):
            return triton_fused.rotary(x, cos, signed_sin)
        return super().rotary(x, cos, signed_sin)

    def silu_mul(self, gate_up: torch.Tensor) -> torch.Tensor:
        from ..kernels import triton_fused

        if triton_fused.silu_mul_applies(gate_up):
            return triton_fused.silu_mul(gate_up)
        return super().silu_mul(gate_up)

    def attends(self, q: torch.Tensor, keys: torch.Tensor, softcap: float | None) -> bool:
        from ..kernels import triton_attention

        return self.native_attention and triton_attention.applies(q, keys, softcap)

    def attention(self, q, keys, values, allowed, is_causal, scale, slots=None) -> torch.Tensor:
        from ..kernels import triton_attention

        return triton_attention.attention(q, keys, values, allowed, is_causal, scale, slots)

    def __repr__(self) -> str:
        return f"TritonOps(native_attention={self.native_attention})"


TORCH_OPS = TorchOps()  # stateless: the default of a layer called on its own, outside a model
