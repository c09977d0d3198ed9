"""precision="fast" kernels (gguf_int8.c): int8 activation quantization and integer block dot products.

Runs under every TOKENMILL_KERNEL_ISA (make test-portable), so the VNNI, AVX2 and scalar paths all face it."""

from __future__ import annotations

import pytest
import torch

from tokenmill import kernels

from test_gguf_kernels import TYPE_IDS, random_blocks, reference
from numerics import UNIT_ROUNDOFF

INT8_TYPES = ("Q4_0", "Q4_1", "Q8_0", "Q4_K", "Q6_K")
PACKED_ONLY = ("Q4_K", "Q6_K")  # only gguf_int8_packed.c multiplies them (AVX-512 VNNI builds)


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


def packed_or_none(blocks: torch.Tensor, type_name: str, columns: int, packed: bool) -> torch.Tensor | None:
    """pack_int8 of the blocks if `packed` and this build has the packed kernel; where it has none, pack_int8
    refuses the type by name and the test runs the GGUF-layout kernel."""
    if not packed:
        return None
    if not kernels.int8_packs(TYPE_IDS[type_name]):
        with pytest.raises(ValueError, match="no packed int8 layout"):
            kernels.pack_int8(blocks, TYPE_IDS[type_name], columns)
        return None
    return kernels.pack_int8(blocks, TYPE_IDS[type_name], columns)


def int8_product(x: torch.Tensor, blocks: torch.Tensor, type_name: str, columns: int, digits: int,
                 packed: bool) -> torch.Tensor | None:
    """matmul_int8 in the layout asked for, or None where the kernels refuse it, having checked that they refuse
    it by name: a packed-only type without its packed layout, or in a build without the packed kernel."""
    type_id = TYPE_IDS[type_name]
    layout = packed_or_none(blocks, type_name, columns, packed)
    if layout is None and type_name in PACKED_ONLY:
        message = "only the packed" if kernels.int8_packs(type_id) else "no integer kernel"
        with pytest.raises(ValueError, match=message):
            kernels.matmul_int8(x, blocks, type_id, columns, digits)
        return None
    return kernels.matmul_int8(x, blocks, type_id, columns, digits, layout)


@pytest.mark.parametrize("type_name", INT8_TYPES)
# 6: a full tile of 4 activation rows and a tail of 2; 11: the packed kernel's tile of 8 and a tail of 3
@pytest.mark.parametrize("rows_of_x", [1, 3, 6, 11])
@pytest.mark.parametrize("digits", [1, 2])
@pytest.mark.parametrize("packed", [False, True])
def test_int8_matmul_equals_the_integer_arithmetic(type_name, rows_of_x, digits, packed):
    rows, columns = 37, 512  # 37: two full groups of 16 packed rows and a group of 5; two K-quant super-blocks
    blocks = random_blocks(type_name, rows, columns, seed=3)
    weights = reference(blocks, type_name, columns).double()  # d * q (+ m): exact in float64
    x = torch.randn(rows_of_x, columns, generator=torch.Generator().manual_seed(4))
    q, q_low, scales, _ = kernels.quantize_int8(x, digits)
    integers = q.double() if q_low is None else 128 * q.double() + q_low.double()
    activations = integers * scales.double().repeat_interleave(32, dim=-1)
    exact = activations @ weights.T  # the same integer products and scales, summed in float64
    out = int8_product(x, blocks, type_name, columns, digits, packed)
    if out is None:
        return
    # per block: d_w * d_x and its product with the exact int sum round once each, then 2 * blocks float sums
    terms = activations.abs() @ weights.abs().T
    bound = (2 * columns // 32 + 3) * UNIT_ROUNDOFF[torch.float32] * terms
    assert ((out.double() - exact).abs() <= bound).all()


@pytest.mark.parametrize("type_name", INT8_TYPES)
@pytest.mark.parametrize("digits", [1, 2])
@pytest.mark.parametrize("packed", [False, True])
def test_each_row_is_the_same_whatever_rows_are_computed_with_it(type_name, digits, packed):
    # the kernels unpack each weight block once for up to 4 (packed: 8) activation rows: a row's sums keep
    # their order
    blocks = random_blocks(type_name, 19, 256, seed=7)
    x = torch.randn(11, 256, generator=torch.Generator().manual_seed(8))
    together = int8_product(x, blocks, type_name, 256, digits, packed)
    if together is None:
        return
    alone = torch.cat([int8_product(x[i:i + 1], blocks, type_name, 256, digits, packed) for i in range(11)])
    assert torch.equal(together, alone)


@pytest.mark.parametrize("type_name", INT8_TYPES)
def test_the_packed_layout_has_the_blocks_size_and_is_checked(type_name):
    type_id = TYPE_IDS[type_name]
    blocks = random_blocks(type_name, 32, 512, seed=9)
    if not kernels.int8_packs(type_id):
        with pytest.raises(ValueError, match="no packed int8 layout"):
            kernels.pack_int8(blocks, type_id, 512)
        return
    packed = kernels.pack_int8(blocks, type_id, 512)
    # the GGUF bytes' size, but Q4_K's 8 six-bit scales and minimums take a byte each (148 bytes per 256 values)
    size = blocks.numel() * 148 // 144 if type_name == "Q4_K" else blocks.numel()
    assert packed.dtype == torch.uint8 and packed.numel() == size  # 32 rows: two full groups
    assert kernels.pack_int8(blocks[:17].contiguous(), type_id, 512).numel() == size  # padded to 32 rows
    with pytest.raises(ValueError, match="cannot pack"):
        kernels.pack_int8(blocks, type_id, 256)  # the row bytes hold 512 columns
    with pytest.raises(ValueError, match="no packed int8 layout"):
        kernels.pack_int8(random_blocks("Q5_K", 2, 256), TYPE_IDS["Q5_K"], 256)


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
    assert not kernels.int8_supports(TYPE_IDS["Q5_K"])
    blocks = random_blocks("Q5_K", 2, 256)
    with pytest.raises(ValueError, match="no integer kernel"):
        kernels.matmul_int8(torch.randn(1, 256), blocks, TYPE_IDS["Q5_K"], 256)
    with pytest.raises(ValueError, match="divisible by 32"):
        kernels.quantize_int8(torch.randn(1, 40))
    with pytest.raises(ValueError, match="1 or 2 digits"):
        kernels.quantize_int8(torch.randn(1, 32), digits=3)
