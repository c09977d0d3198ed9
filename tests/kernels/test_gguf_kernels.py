"""The float32 GGUF kernels against tokenmill's torch dequantizers (themselves checked against gguf-py).

Dequantization must be bit-identical; matmuls must equal x @ dequantized(W).T up to float32 summation order,
and give every row the same result whatever the number of rows computed with it (batch invariance).
"""

from __future__ import annotations

import pytest
import torch

from tokenmill import kernels
from tokenmill.loading import dequant

from numerics import UNIT_ROUNDOFF, assert_runs_agree, rounding_floor

# byte offsets of each block's float16 fields (scales, mins): set to finite values in random blocks
HALF_FIELDS = {"Q4_0": (0,), "Q4_1": (0, 2), "Q5_0": (0,), "Q5_1": (0, 2), "Q8_0": (0,), "Q2_K": (80, 82),
               "Q3_K": (108,), "Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,), "IQ4_NL": (0,), "IQ4_XS": (0,),
               "NF4": (0,), "FP4": (0,)}
TYPE_IDS = {info.name: type_id for type_id, info in dequant.GGML_TYPES.items()}


def test_kernels_build_here():
    # this machine has a C compiler: a failed build must fail the suite, not fall back silently
    assert kernels.available()
    assert all(kernels.supports(TYPE_IDS[name]) for name in HALF_FIELDS)
    assert not kernels.supports(TYPE_IDS["F16"])


def random_blocks(type_name: str, rows: int, columns: int, seed: int = 0) -> torch.Tensor:
    """uint8 [rows, row_bytes]: random quantized payloads with finite, realistic float16 scales."""
    info = dequant.GGML_TYPES[TYPE_IDS[type_name]]
    generator = torch.Generator().manual_seed(seed)
    count = rows * columns // info.block_elements
    blocks = torch.randint(0, 256, (count, info.block_bytes), dtype=torch.uint8, generator=generator)
    for offset in HALF_FIELDS[type_name]:
        scales = (torch.rand(count, generator=generator) * 0.02 + 1e-4).half()
        blocks[:, offset:offset + 2] = scales.view(torch.uint8).view(count, 2)
    return blocks.view(rows, -1)


def reference(blocks: torch.Tensor, type_name: str, columns: int) -> torch.Tensor:
    return dequant.dequantize(blocks.reshape(-1).clone(), TYPE_IDS[type_name], (blocks.shape[0], columns))


@pytest.mark.parametrize("type_name", sorted(HALF_FIELDS))
def test_dequantization_is_bit_identical(type_name):
    columns = dequant.GGML_TYPES[TYPE_IDS[type_name]].block_elements * 3
    blocks = random_blocks(type_name, 21, columns)
    expected = reference(blocks, type_name, columns)
    assert torch.equal(kernels.dequantize_rows(blocks, TYPE_IDS[type_name], columns), expected)
    ids = torch.tensor([[20, 0], [7, 7]])
    gathered = kernels.dequantize_rows(blocks, TYPE_IDS[type_name], columns, ids)
    assert torch.equal(gathered, expected[ids.reshape(-1)])


@pytest.mark.parametrize("type_name", sorted(HALF_FIELDS))
@pytest.mark.parametrize("rows_of_x", [1, 3, 4, 5, 8, 13, 34])  # each tile path, short groups
def test_matmul_equals_dense_float32(type_name, rows_of_x):
    columns = dequant.GGML_TYPES[TYPE_IDS[type_name]].block_elements * 2
    blocks = random_blocks(type_name, 37, columns, seed=rows_of_x)  # 37 rows: tiles of 16 and of 4 plus remainders
    weight = reference(blocks, type_name, columns)
    x = torch.randn(rows_of_x, columns, generator=torch.Generator().manual_seed(1))
    out = kernels.matmul(x, blocks, TYPE_IDS[type_name], columns)
    expected = (x.double() @ weight.double().t()).float()
    scale = (x.abs().double() @ weight.abs().double().t()).float()  # the sum of |terms|: what rounding scales with
    # one float32 dot product of length `columns` per output, in any blocking or ISA: tests/numerics.py's statistical
    # floor relative to the sum of |terms|, plus the final rounding of the float64 reference to float32
    bound = rounding_floor(columns, 1, out.numel(), 1.0) * scale + UNIT_ROUNDOFF[torch.float32] * expected.abs()
    assert torch.all((out - expected).abs() <= bound), type_name


@pytest.mark.parametrize("type_name", ["Q4_1", "Q8_0", "Q4_K", "Q6_K", "Q5_0", "Q3_K"])
def test_each_row_is_independent_of_the_batch(type_name):
    columns = dequant.GGML_TYPES[TYPE_IDS[type_name]].block_elements * 2
    blocks = random_blocks(type_name, 19, columns)
    x = torch.randn(34, columns)
    alone = torch.cat([kernels.matmul(x[row:row + 1], blocks, TYPE_IDS[type_name], columns) for row in range(34)])
    for count in (3, 6, 8, 11, 34):  # register tiles, packed register tiles, packed tiles over scratch
        together = kernels.matmul(x[:count], blocks, TYPE_IDS[type_name], columns)
        assert torch.equal(together, alone[:count]), count


def test_leading_dimensions_and_strided_input():
    blocks = random_blocks("Q4_0", 8, 64)
    x = torch.randn(2, 3, 128)[..., ::2]  # not contiguous
    out = kernels.matmul(x, blocks, TYPE_IDS["Q4_0"], 64)
    assert out.shape == (2, 3, 8)
    assert_runs_agree(out, x @ reference(blocks, "Q4_0", 64).t(), 64, 1, "strided input")  # tests/numerics.py


def test_unsupported_type_is_an_error():
    with pytest.raises(RuntimeError, match="ggml type 1"):
        kernels.matmul(torch.randn(1, 32), torch.zeros(4, 64, dtype=torch.uint8), TYPE_IDS["F16"], 32)


def test_bad_inputs_are_errors_not_crashes():
    blocks = random_blocks("Q4_0", 8, 64)
    with pytest.raises(RuntimeError, match="run on the CPU"):
        kernels.matmul(torch.randn(1, 64, device="meta"), blocks, TYPE_IDS["Q4_0"], 64)
    with pytest.raises(ValueError, match="float32 activations"):
        kernels.matmul(torch.randn(1, 64, dtype=torch.float64), blocks, TYPE_IDS["Q4_0"], 64)
    with pytest.raises(ValueError, match="contiguous uint8"):
        kernels.matmul(torch.randn(1, 64), blocks.t(), TYPE_IDS["Q4_0"], 64)
    with pytest.raises(IndexError, match=r"row ids must be in \[0, 8\)"):
        kernels.dequantize_rows(blocks, TYPE_IDS["Q4_0"], 64, torch.tensor([3, 8]))  # an embedding id out of range


@pytest.mark.parametrize("type_name", sorted(HALF_FIELDS))
@pytest.mark.parametrize("rows_of_x", [1, 6, 9])  # register tiles, packed register tiles, packed scratch tiles
def test_matmul_unpacks_blocks_to_exactly_the_dequantized_values(type_name, rows_of_x):
    """x rows that are unit vectors pick single weights out: every product but one is an exact zero, so the
    kernel's in-register unpacking must reproduce the dequantizer's float32 values bit for bit."""
    columns = dequant.GGML_TYPES[TYPE_IDS[type_name]].block_elements * 2
    blocks = random_blocks(type_name, 21, columns, seed=7)
    weight = kernels.dequantize_rows(blocks, TYPE_IDS[type_name], columns)
    picked = torch.randperm(columns, generator=torch.Generator().manual_seed(rows_of_x))[:rows_of_x]
    x = torch.zeros(rows_of_x, columns)
    x[torch.arange(rows_of_x), picked] = 1.0
    out = kernels.matmul(x, blocks, TYPE_IDS[type_name], columns)
    assert torch.equal(out, weight[:, picked].t() + 0.0)  # + 0.0: a -0.0 weight sums to +0.0
