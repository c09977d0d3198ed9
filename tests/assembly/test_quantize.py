"""Float → block quantizers: the GGUF types byte for byte as gguf-py's reference quantizers (ggml-quants.c's
arithmetic); NF4 / FP4 against their definition (d = float16 absmax, the code-book entry between midpoints)."""

from __future__ import annotations

import pytest
import torch
from gguf import GGMLQuantizationType, quants
from torch import nn

from tokenmill import kernels
from tokenmill.assembly.quantize import QUANTIZERS, quantize_modules, quantize_weight
from tokenmill.loading.dequant import FP4_VALUES, NF4_VALUES


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


@pytest.mark.parametrize("method, values", [("nf4", NF4_VALUES), ("fp4", FP4_VALUES)])
def test_code_book_types_follow_their_definition(method, values):
    weight = sample_weights()
    quantized = quantize_weight(weight, method)
    table = torch.tensor(values, dtype=torch.float32)
    blocks = weight.reshape(-1, 32)
    d = blocks.abs().amax(1, keepdim=True).half().float()
    scaled = blocks / torch.where(d == 0, torch.ones_like(d), d)
    midpoints = (table[1:] + table[:-1]) / 2
    codes = (scaled.unsqueeze(-1) > midpoints).sum(-1)  # how many midpoints lie strictly below
    expected = (table[codes] * d).view_as(weight)
    assert torch.equal(quantized.dequantize(), expected)
    # the entry is the nearest one (up to float32 rounding of the midpoints)
    nearest = (scaled.unsqueeze(-1) - table).abs().amin(-1)
    assert torch.all((scaled - table[codes]).abs() <= nearest + 1e-6)


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
