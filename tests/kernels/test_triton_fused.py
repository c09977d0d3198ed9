"""The Triton RMSNorm, rotary and silu(gate) * up under TRITON_INTERPRET=1 (the CPU standing in for the GPU)
against float64 references of the same formulas. Bounds: tests/numerics.py's float32 rounding floor (RMSNorm:
a sum of squares over the row, then two products; rotary: two products and a sum; silu * up: a few element-wise
operations), scaled by the largest |result|; bf16 / fp16 results add a rounding of the output at that dtype per
rounding point ATen has (x * cos, x' * sin and their sum; silu and the product), each a directed rounding's 2u:
the interpreter truncates to bf16 where the GPU rounds to nearest (u), and the bound must hold for both."""

from __future__ import annotations

import pytest
import torch
from numerics import UNIT_ROUNDOFF, rounding_floor

import triton  # noqa: E402,F401  (the test extra; on the CPU through its interpreter: tests/conftest.py)
from tokenmill.execution.ops import TorchOps  # noqa: E402
from tokenmill.kernels import triton_fused  # noqa: E402

pytestmark = pytest.mark.triton


def _assert_within(got, expected, reduction, products, rounding_points):
    magnitude = expected.abs().max().item()
    allowed = rounding_floor(reduction, products, got.numel(), magnitude)
    if got.dtype != torch.float32:
        allowed += rounding_points * 2 * UNIT_ROUNDOFF[got.dtype] * magnitude
    error = (got.double() - expected).abs().max().item()
    assert error <= allowed, (error, allowed)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("unit_offset", [False, True])
def test_rms_norm(dtype, unit_offset):
    torch.manual_seed(1)
    x = (torch.randn(3, 5, 72) * 4).to(dtype)
    weight = torch.randn(72).to(dtype)
    got = triton_fused.rms_norm(x, weight, 1e-6, unit_offset)
    x64 = x.double()
    normed = x64 * torch.rsqrt(x64.pow(2).mean(-1, keepdim=True) + 1e-6)
    expected = normed * (1.0 + weight.double() if unit_offset else weight.double())
    assert got.dtype == dtype and got.shape == x.shape
    _assert_within(got, expected, 72, 3, rounding_points=2)


def test_rms_norm_reads_strided_rows():
    torch.manual_seed(2)
    wide = torch.randn(4, 100)
    x = wide[:, :64]  # rows 100 apart: a view the kernel reads through its row stride
    weight = torch.randn(64)
    assert triton_fused.rms_norm_applies(x, weight)
    got = triton_fused.rms_norm(x, weight, 1e-5, False)
    expected = TorchOps().rms_norm(x.double(), weight.double(), 1e-5, False)
    _assert_within(got, expected, 64, 3, rounding_points=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_silu_mul(dtype):
    torch.manual_seed(3)
    gate_up = (torch.randn(2, 7, 2 * 48) * 3).to(dtype)
    got = triton_fused.silu_mul(gate_up)
    gate, up = gate_up.double().chunk(2, dim=-1)
    expected = torch.nn.functional.silu(gate) * up
    assert got.shape == (2, 7, 48)
    _assert_within(got, expected, 1, 4, rounding_points=2)


@pytest.mark.parametrize("rotary_dim, dtype", [(32, torch.float32), (16, torch.float32), (32, torch.bfloat16)])
def test_rotary_on_a_transposed_projection(rotary_dim, dtype):
    torch.manual_seed(4)
    batch, seq, heads, head_dim = 2, 5, 3, 32
    x = torch.randn(batch, seq, heads, head_dim).to(dtype).transpose(1, 2)  # as the attention layers hand it
    angles = torch.randn(batch, 1, seq, rotary_dim // 2).repeat(1, 1, 1, 2)
    cos = angles.cos().to(dtype)
    signed_sin = torch.cat((-angles[..., :rotary_dim // 2].sin(), angles[..., rotary_dim // 2:].sin()), -1).to(dtype)
    assert triton_fused.rotary_applies(x, cos, signed_sin)
    got = triton_fused.rotary(x, cos, signed_sin)
    expected = TorchOps().rotary(x.double(), cos.double(), signed_sin.double())
    assert got.shape == x.shape
    _assert_within(got, expected, 2, 2, rounding_points=3)
    assert torch.equal(got[..., rotary_dim:], x[..., rotary_dim:])  # passthrough features untouched


def test_rotary_broadcasts_one_table_over_the_batch():
    torch.manual_seed(5)
    x = torch.randn(3, 2, 4, 16)
    angles = torch.randn(1, 1, 4, 8).repeat(1, 1, 1, 2)
    cos, signed_sin = angles.cos(), torch.cat((-angles[..., :8].sin(), angles[..., 8:].sin()), -1)
    got = triton_fused.rotary(x, cos, signed_sin)
    expected = TorchOps().rotary(x.double(), cos.double(), signed_sin.double())
    _assert_within(got, expected, 2, 2, rounding_points=0)


def test_shapes_the_kernels_do_not_serve_are_refused():
    x = torch.randn(2, 8)
    assert not triton_fused.rms_norm_applies(x.t(), torch.randn(2))  # a strided last dim
    assert not triton_fused.silu_mul_applies(torch.randn(2, 7))  # odd width: no [gate | up] split
    assert not triton_fused.rms_norm_applies(torch.randn(2, 8, dtype=torch.float64), torch.randn(8))
