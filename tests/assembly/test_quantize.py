"""Float → block quantizers: the GGUF types byte for byte as gguf-py's reference quantizers (ggml-quants.c's
arithmetic); NF4 / FP4 against their definition (the code-book entry between midpoints for the stored float16
scale: bitsandbytes' absmax, or the searched scale, never a worse fit)."""

from __future__ import annotations

import pytest
import torch
from gguf import GGMLQuantizationType, quants
from torch import nn

from tokenmill import kernels
from tokenmill.assembly.quantize import (QUANTIZERS, SCALE_FACTORS, code_book_codes, quantize_code_book_absmax,
                                        quantize_modules, quantize_weight)
from tokenmill.kernels.gguf_types import BY_NAME
from tokenmill.loading.dequant import FP4_VALUES, NF4_VALUES, dequantize


NAMES = {NF4_VALUES: BY_NAME["NF4"].type_id, FP4_VALUES: BY_NAME["FP4"].type_id}


def sample_weights(rows: int = 48, columns: int = 128) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(rows, columns, generator=generator) * 0.05
    weight[0, :32] = 0  # an all-zero block: scale 0, no division by zero
    weight[1, :32] = 0.01  # a constant block: max == min
    weight[2, 5] = 3.0  # an outlier
    return weight


@pytest.mark.parametrize("method", ["q8_0", "q4_0", "q4_1", "q5_0", "q5_1"])
def test_gguf_types_equal_gguf_py_byte_for_byte(method):
    weight = sample_weights()
    blocks = quantize_weight(weight, method).blocks
    expected = quants.quantize(weight.numpy(), GGMLQuantizationType[method.upper()])
    assert torch.equal(blocks, torch.from_numpy(expected))


def nearest_entries(blocks: torch.Tensor, d: torch.Tensor, values: tuple[float, ...]) -> torch.Tensor:
    """The definition: each weight's code-book entry for stored scales d [n, 1], the midpoint rule spelled out."""
    table = torch.tensor(values, dtype=torch.float32)
    scaled = blocks / torch.where(d == 0, torch.ones_like(d), d)
    midpoints = (table[1:] + table[:-1]) / 2
    codes = (scaled.unsqueeze(-1) > midpoints).sum(-1)  # how many midpoints lie strictly below
    # the entry is the nearest one (up to float32 rounding of the midpoints)
    nearest = (scaled.unsqueeze(-1) - table).abs().amin(-1)
    assert torch.all((scaled - table[codes]).abs() <= nearest + 1e-6)
    return table[codes] * d


@pytest.mark.parametrize("values", [NF4_VALUES, FP4_VALUES])
def test_code_book_codes_count_the_midpoints_strictly_below(values):
    """The lookup table's codes equal a binary search's, on the midpoints themselves and one float step either
    side of them (where a bin's correction decides), on huge values and on both zeros."""
    table = torch.tensor(values, dtype=torch.float32)
    midpoints = (table[1:] + table[:-1]) / 2
    scaled = torch.cat((torch.randn(100_000, generator=torch.Generator().manual_seed(3)), midpoints,
                        torch.nextafter(midpoints, torch.tensor(9.0)), torch.nextafter(midpoints, torch.tensor(-9.0)),
                        torch.tensor([1e30, -1e30, 0.0, -0.0, 2.0, -2.0])))
    assert torch.equal(code_book_codes(scaled, values), torch.bucketize(scaled, midpoints))


@pytest.mark.parametrize("values", [NF4_VALUES, FP4_VALUES])
def test_absmax_code_book_blocks_follow_bitsandbytes_definition(values):
    blocks = sample_weights().reshape(-1, 32)
    quantized = quantize_code_book_absmax(blocks, values)
    d = blocks.abs().amax(1, keepdim=True).half().float()
    assert torch.equal(quantized[:, :2].contiguous().view(torch.float16).float(), d)
    assert torch.equal(dequantize(quantized.reshape(-1), NAMES[values], (blocks.numel(),)).view_as(blocks),
                       nearest_entries(blocks, d, values))


@pytest.mark.parametrize("method, values", [("nf4", NF4_VALUES), ("fp4", FP4_VALUES)])
def test_code_book_types_take_the_nearest_entries_of_a_searched_scale(method, values):
    weight = sample_weights()
    weight[3, :32] = torch.linspace(-0.1, 0.02, 32)  # mostly negative: NF4 mirrored (8 entries below 0) fits better
    blocks = weight.reshape(-1, 32)
    quantized = quantize_weight(weight, method)
    d = quantized.blocks.view(-1, 18)[:, :2].contiguous().view(torch.float16).float()
    searched = quantized.dequantize().reshape(-1, 32)
    assert torch.equal(searched, nearest_entries(blocks, d, values))
    absmax = dequantize(quantize_code_book_absmax(blocks, values).reshape(-1), NAMES[values], (blocks.numel(),)).view_as(blocks)
    searched_error, absmax_error = (blocks - searched).square().sum(1), (blocks - absmax).square().sum(1)
    assert torch.all(searched_error <= absmax_error)  # never worse than bitsandbytes' scale, block by block
    assert searched_error.sum() < 0.9 * absmax_error.sum()  # and better overall on normal weights
    assert torch.all(d.abs() <= blocks.abs().amax(1, keepdim=True) / SCALE_FACTORS[-1])
    assert (d[3 * 4] < 0).item() == (method == "nf4")  # FP4 is symmetric: its mirror is no other fit
    assert torch.equal(searched[0], blocks[0])  # the all-zero block stays zero


@pytest.mark.parametrize("method", sorted(QUANTIZERS))
def test_kernels_read_the_blocks_as_the_dequantizer_does(method):
    weight = sample_weights()
    quantized = quantize_weight(weight, method)
    assert kernels.supports(quantized.ggml_type)
    assert torch.equal(kernels.dequantize_rows(quantized.blocks, quantized.ggml_type, weight.shape[1]),
                       quantized.dequantize())
    assert (quantized.dequantize() - weight).abs().max() <= weight.abs().max() / 4  # the same matrix, coarsely


def test_bad_shapes_and_ranges_are_errors():
    with pytest.raises(ValueError, match="40 columns are not a multiple of the 32-value blocks"):
        quantize_weight(torch.zeros(4, 40), "q8_0", "down.weight")
    with pytest.raises(ValueError, match="beyond float16's range"):
        quantize_weight(torch.full((2, 32), 1e6), "nf4")


def test_linear_layers_are_quantized_and_skips_honoured():
    model = nn.ModuleDict({"attn": nn.Linear(64, 32, bias=False), "narrow": nn.Linear(40, 32, bias=False),
                           "lm_head": nn.Linear(64, 10, bias=False), "embed": nn.Embedding(10, 64)})
    weights = {f"{name}.weight": module.weight.detach() for name, module in model.items()}
    plain = quantize_modules(model, weights, "q4_0", ("lm_head",), embeddings=False)
    assert [name for name, t in plain.items() if not isinstance(t, torch.Tensor)] == ["attn.weight"]
    everything = quantize_modules(model, weights, "q4_0", (), embeddings=True)
    assert sorted(name for name, t in everything.items() if not isinstance(t, torch.Tensor)) == [
        "attn.weight", "embed.weight", "lm_head.weight"]  # "narrow" (40 columns) cannot be blocked: float
