"""RMSNorm, rotary embedding and SwiGLU's silu(gate) * up in Triton (CUDA; on the CPU only under TRITON_INTERPRET=1,
for the tests): each one kernel launch where ATen runs several element-wise passes over the activations.

The arithmetic is ATen's (TorchOps): statistics and silu in float32 whatever the activation dtype, rounding to it
where ATen rounds, so bf16 results differ from ATen's only by the order of the RMSNorm sum. One program per row
(a token's hidden vector, or one head of one token for rotary); rows are short enough (≤ 16k columns) to stay in
registers.
"""

from __future__ import annotations

import os

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # the `triton` extra; CUDA then runs ATen's element-wise ops
    triton = None

MAX_COLUMNS = 16384  # one row per program, held in registers
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _on_device(x: torch.Tensor) -> bool:
    return triton is not None and (x.is_cuda or os.environ.get("TRITON_INTERPRET") == "1")


def rms_norm_applies(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """A contiguous last dim of at most MAX_COLUMNS floats with a weight of that width."""
    return (_on_device(x) and x.dtype in FLOAT_DTYPES and x.stride(-1) == 1 and weight.is_contiguous()
            and weight.shape == (x.shape[-1],) and x.shape[-1] <= MAX_COLUMNS)


def silu_mul_applies(gate_up: torch.Tensor) -> bool:
    return (_on_device(gate_up) and gate_up.dtype in FLOAT_DTYPES and gate_up.is_contiguous()
            and gate_up.shape[-1] % 2 == 0 and gate_up.shape[-1] // 2 <= MAX_COLUMNS)


def rotary_applies(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> bool:
    """x [batch, heads, seq, head_dim] (any strides, unit last), cos/signed_sin [batch, 1, seq, rotary_dim]."""
    return (_on_device(x) and x.dim() == 4 and x.dtype in FLOAT_DTYPES and x.stride(-1) == 1
            and cos.dtype == x.dtype and signed_sin.dtype == x.dtype and cos.shape == signed_sin.shape
            and cos.dim() == 4 and cos.shape[1] == 1 and cos.shape[-1] % 2 == 0
            and cos.shape[-1] <= x.shape[-1] <= MAX_COLUMNS and cos.shape[2] == x.shape[2]
            and cos.shape[0] in (1, x.shape[0]) and cos.stride(-1) == 1 and signed_sin.stride(-1) == 1)


if triton is not None:
    @triton.jit
    def _rms_norm_row(x_ptr, w_ptr, out_ptr, row_stride, columns, eps,
                      UNIT_OFFSET: tl.constexpr, BLOCK: tl.constexpr):
        row = tl.program_id(0)
        c = tl.arange(0, BLOCK)
        valid = c < columns
        x = tl.load(x_ptr + row * row_stride + c, mask=valid, other=0.0)
        x32 = x.to(tl.float32)
        inverse_rms = 1.0 / tl.sqrt(tl.sum(x32 * x32, axis=0) / columns + eps)
        normed = x32 * inverse_rms
        w = tl.load(w_ptr + c, mask=valid, other=0.0)
        if UNIT_OFFSET:  # Gemma: (1 + weight) in float32, rounded once
            out = (normed * (1.0 + w.to(tl.float32))).to(x.dtype)
        else:  # the weight times the normalised row rounded to the activation dtype, as ATen
            out = (w.to(tl.float32) * normed.to(x.dtype).to(tl.float32)).to(x.dtype)
        tl.store(out_ptr + row * columns + c, out, mask=valid)

    @triton.jit
    def _silu_mul_row(gate_up_ptr, out_ptr, width, BLOCK: tl.constexpr):
        row = tl.program_id(0)
        c = tl.arange(0, BLOCK)
        valid = c < width
        gate = tl.load(gate_up_ptr + row * 2 * width + c, mask=valid, other=0.0)
        up = tl.load(gate_up_ptr + row * 2 * width + width + c, mask=valid, other=0.0)
        g32 = gate.to(tl.float32)
        silu = (g32 / (1.0 + tl.exp(-g32))).to(gate.dtype)  # ATen rounds silu's result before the product
        tl.store(out_ptr + row * width + c, (silu.to(tl.float32) * up.to(tl.float32)).to(gate.dtype), mask=valid)

    @triton.jit
    def _rotary_row(x_ptr, cos_ptr, sin_ptr, out_ptr, heads, seq, head_dim, rotary_dim,
                    sx_b, sx_h, sx_s, sc_b, sc_s, ss_b, ss_s, BLOCK: tl.constexpr):
        program = tl.program_id(0)  # (batch, head, position) flattened
        b, h, s = program // (heads * seq), (program // seq) % heads, program % seq
        c = tl.arange(0, BLOCK)
        valid = c < head_dim
        rotated = c < rotary_dim
        half = rotary_dim // 2
        partner = tl.where(c < half, c + half, c - half)  # rotate_half as a roll by half the rotary width
        base = x_ptr + b * sx_b + h * sx_h + s * sx_s
        x = tl.load(base + c, mask=valid, other=0.0)
        x_partner = tl.load(base + partner, mask=rotated, other=0.0)
        cos = tl.load(cos_ptr + b * sc_b + s * sc_s + c, mask=rotated, other=1.0)
        sin = tl.load(sin_ptr + b * ss_b + s * ss_s + c, mask=rotated, other=0.0)
        # ATen: x * cos and x_partner * sin each rounded to the dtype, then their sum
        first = (x.to(tl.float32) * cos.to(tl.float32)).to(x.dtype)
        second = (x_partner.to(tl.float32) * sin.to(tl.float32)).to(x.dtype)
        out = tl.where(rotated, (first.to(tl.float32) + second.to(tl.float32)).to(x.dtype), x)
        tl.store(out_ptr + program * head_dim + c, out, mask=valid)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, unit_offset: bool) -> torch.Tensor:
    """x / rms(x) * weight (unit_offset: * (1 + weight)) over the last dim; see rms_norm_applies."""
    columns = x.shape[-1]
    rows = x.reshape(-1, columns)
    out = torch.empty(rows.shape, dtype=x.dtype, device=x.device)
    if rows.shape[0]:
        _rms_norm_row[(rows.shape[0],)](rows, weight, out, rows.stride(0), columns, eps,
                                        UNIT_OFFSET=unit_offset, BLOCK=triton.next_power_of_2(columns))
    return out.view(x.shape)


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up for [..., 2 * width] = [gate | up]; see silu_mul_applies."""
    width = gate_up.shape[-1] // 2
    rows = gate_up.reshape(-1, 2 * width)
    out = torch.empty((rows.shape[0], width), dtype=gate_up.dtype, device=gate_up.device)
    if rows.shape[0]:
        _silu_mul_row[(rows.shape[0],)](rows, out, width, BLOCK=triton.next_power_of_2(width))
    return out.view(*gate_up.shape[:-1], width)


def rotary(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """x * cos + roll(x, rotary_dim / 2) * signed_sin on the first rotary_dim features, the rest passed through;
    a contiguous [batch, heads, seq, head_dim] result; see rotary_applies."""
    batch, heads, seq, head_dim = x.shape
    out = torch.empty((batch, heads, seq, head_dim), dtype=x.dtype, device=x.device)
    if out.numel():
        cos_batch = cos.stride(0) if cos.shape[0] > 1 else 0  # one table broadcast over the batch
        sin_batch = signed_sin.stride(0) if signed_sin.shape[0] > 1 else 0
        _rotary_row[(batch * heads * seq,)](x, cos, signed_sin, out, heads, seq, head_dim, cos.shape[-1],
                                            x.stride(0), x.stride(1), x.stride(2), cos_batch, cos.stride(2),
                                            sin_batch, signed_sin.stride(2), BLOCK=triton.next_power_of_2(head_dim))
    return out
