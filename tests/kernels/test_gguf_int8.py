"""precision="fast" kernels (gguf_int8.c): int8 activation quantization and integer block dot products.

Runs under every TOKENMILL_KERNEL_ISA (make test-portable), so the VNNI, AVX2 and scalar paths all face it."""

from __future__ import annotations

import pytest
import torch

from tokenmill import kernels

from test_gguf_kernels import TYPE_IDS, random_blocks, reference
from numerics import UNIT_ROUNDOFF

INT8_TYPES = ("Q4_0", "Q4_1", "Q8_0")


def test_quantization_matches_float32_reference_exactly():
    x = torch.randn(3, 128, generator=torch.Generator().manual_seed(1)) * 3
    x[1, :32] = 0.0  # an all-zero block quantizes to zeros with scale 0
    q, q_low, scales, sums = kernels.quantize_int8(x, digits=1)
    assert q_low is None
    blocks = x.view(3, 4, 32)
    expected_scales = blocks.abs().amax(-1) / 127.0
    inverse = torch.where(expected_scales > 0, 1.0 / expected_scales, torch.zeros(()))
    expected_q = torch.round(blocks * inverse[..., None]).to(torch.int8)  # both round half to even
    assert torch.equal(scales, expected_scales)
    assert torch.equal(q.view(3, 4, 32), expected_q)
    assert torch.equal(sums, expected_q.to(torch.int32).sum(-1))


def test_second_digit_is_the_rounded_remainder_in_128ths():
    x = torch.randn(3, 128, generator=torch.Generator().manual_seed(1)) * 3
    x[1, :32] = 0.0
    q1, _, scales1, _ = kernels.quantize_int8(x, digits=1)
    q, q_low, scales, sums = kernels.quantize_int8(x, digits=2)
    assert torch.equal(q, q1)  # the first digit is one-digit quantization
    inverse = torch.where(scales1 > 0, 1.0 / scales1, torch.zeros(())).repeat_interleave(32, dim=-1)
    remainder = x * inverse - q.float()  # exact in float32: both in the same binade
    assert torch.equal(q_low, torch.round(remainder * 128).to(torch.int8))
    assert int(q_low.abs().max()) <= 64
    assert torch.equal(scales, scales1 / 128)
    integers = 128 * q.to(torch.int32) + q_low.to(torch.int32)
    assert torch.equal(sums, integers.view(3, 4, 32).sum(-1))
    # each value within half a step of 1/128 of one digit's: d / 256
    steps = scales.repeat_interleave(32, dim=-1).double()
    assert ((integers.double() * steps - x.double()).abs() <= steps / 2 * (1 + 1e-6)).all()


@pytest.mark.parametrize("type_name", INT8_TYPES)
@pytest.mark.parametrize("rows_of_x", [1, 3, 6])  # 6: a full tile of 4 activation rows and a tail of 2
@pytest.mark.parametrize("digits", [1, 2])
def test_int8_matmul_equals_the_integer_arithmetic(type_name, rows_of_x, digits):
    rows, columns = 37, 256
    blocks = random_blocks(type_name, rows, columns, seed=3)
    weights = reference(blocks, type_name, columns).double()  # d * q (+ m): exact in float64
    x = torch.randn(rows_of_x, columns, generator=torch.Generator().manual_seed(4))
    q, q_low, scales, _ = kernels.quantize_int8(x, digits)
    integers = q.double() if q_low is None else 128 * q.double() + q_low.double()
    activations = integers * scales.double().repeat_interleave(32, dim=-1)
    exact = activations @ weights.T  # the same integer products and scales, summed in float64
    out = kernels.matmul_int8(x, blocks, TYPE_IDS[type_name], columns, digits)
    # per block: d_w * d_x and its product with the exact int sum round once each, then 2 * blocks float sums
    terms = activations.abs() @ weights.abs().T
    bound = (2 * columns // 32 + 3) * UNIT_ROUNDOFF[torch.float32] * terms
    assert ((out.double() - exact).abs() <= bound).all()


@pytest.mark.parametrize("type_name", INT8_TYPES)
@pytest.mark.parametrize("digits", [1, 2])
def test_each_row_is_the_same_whatever_rows_are_computed_with_it(type_name, digits):
    # the kernel unpacks each weight block once for up to 4 activation rows: a row's sums keep their order
    blocks = random_blocks(type_name, 19, 256, seed=7)
    x = torch.randn(7, 256, generator=torch.Generator().manual_seed(8))
    together = kernels.matmul_int8(x, blocks, TYPE_IDS[type_name], 256, digits)
    alone = torch.cat([kernels.matmul_int8(x[i:i + 1], blocks, TYPE_IDS[type_name], 256, digits) for i in range(7)])
    assert torch.equal(together, alone)


@pytest.mark.parametrize("digits, cosine_floor", [(1, 0.999), (2, 0.999999)])
def test_int8_is_close_to_the_float32_product(digits, cosine_floor):
    # the quantization error of int8 activations: far under 1% of the product's scale on random data (one
    # digit, ~0.3% rms per value), 128 times less with two
    blocks = random_blocks("Q4_1", 64, 512, seed=5)
    x = torch.randn(2, 512, generator=torch.Generator().manual_seed(6))
    exact = kernels.matmul(x, blocks, TYPE_IDS["Q4_1"], 512)
    fast = kernels.matmul_int8(x, blocks, TYPE_IDS["Q4_1"], 512, digits)
    cosine = torch.nn.functional.cosine_similarity(exact.double().flatten(), fast.double().flatten(), dim=0)
    assert cosine > cosine_floor


def test_types_without_integer_kernels_are_refused_by_name():
    assert not kernels.int8_supports(TYPE_IDS["Q4_K"])
    blocks = random_blocks("Q4_K", 2, 256)
    with pytest.raises(ValueError, match="no integer kernel"):
        kernels.matmul_int8(torch.randn(1, 256), blocks, TYPE_IDS["Q4_K"], 256)
    with pytest.raises(ValueError, match="divisible by 32"):
        kernels.quantize_int8(torch.randn(1, 40))
    with pytest.raises(ValueError, match="1 or 2 digits"):
        kernels.quantize_int8(torch.randn(1, 32), digits=3)
