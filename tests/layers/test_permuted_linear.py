"""PermutedLinear: blocks of W[:, order] with the activations gathered in that order compute x @ W.T (to
summation order), on the kernel path and the dense path; everything outside sees W in its own order."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from tokenmill.assembly.quantize import quantize_weight
from tokenmill.layers.permuted_linear import PermutedLinear, PermutedWeight
from tokenmill.layers.quantized_linear import DENSE_ABOVE_ROWS, dense_copy

from numerics import assert_runs_agree

IN, OUT = 96, 40


def permuted_layer(bias: bool = True) -> tuple[PermutedLinear, torch.Tensor, torch.Tensor]:
    """(layer, W as the layer holds it in the original order, bias)."""
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(OUT, IN, generator=generator)
    order = torch.randperm(IN, generator=generator)
    stored = quantize_weight(weight[:, order], "q8_0")
    layer = PermutedLinear(PermutedWeight(stored.blocks, stored.ggml_type, IN, order), bias=bias)
    values = stored.dequantize()[:, order.argsort()]  # the quantized values, columns back in place
    bias_values = torch.randn(OUT, generator=generator)
    if bias:
        layer.bias = nn.Parameter(bias_values, requires_grad=False)
    return layer, values, bias_values


def test_forward_equals_the_unpermuted_matmul_on_both_paths():
    layer, weight, bias = permuted_layer()
    for rows in (3, DENSE_ABOVE_ROWS + 5):  # the block kernel, then one dense matmul over the dequantized blocks
        x = torch.randn(rows, IN, generator=torch.Generator().manual_seed(rows))
        assert_runs_agree(layer(x), F.linear(x, weight, bias), IN, 1, f"{rows} rows")


def test_outside_sees_the_original_order():
    layer, weight, bias = permuted_layer()
    assert torch.equal(layer.weight, weight)
    assert torch.equal(layer.quantized_weight.dequantize(), weight[:, layer.input_order])  # what the kernel reads
    assert torch.equal(layer.state_dict()["weight"], weight)
    assert torch.equal(PermutedWeight(layer.blocks, layer.ggml_type, IN, layer.input_order).dequantize(), weight)
    dense = dense_copy(layer)
    assert type(dense) is nn.Linear and torch.equal(dense.weight, weight) and torch.equal(dense.bias, bias)


def test_row_shards_and_splits_keep_the_order():
    layer, weight, bias = permuted_layer()
    shard = layer.rows(8, 24)
    x = torch.randn(2, IN, generator=torch.Generator().manual_seed(1))
    assert torch.equal(shard.weight, weight[8:24]) and torch.equal(shard.bias, bias[8:24])
    assert_runs_agree(shard(x), F.linear(x, weight[8:24], bias[8:24]), IN, 1, "row shard")
    first, second = PermutedWeight(layer.blocks, layer.ggml_type, IN, layer.input_order).split([10, 30])
    assert torch.equal(first.dequantize(), weight[:10]) and torch.equal(second.dequantize(), weight[10:])
