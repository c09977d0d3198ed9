"""k-quant quantizers (Q2_K … Q6_K): the bytes decode (tokenmill's dequantizer, the C kernels and gguf-py's
reader) to exactly the values the quantizer chose, and the error stays within what the format's step allows."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType, quants

from tokenmill import kernels
from tokenmill.assembly.quantize import quantize_weight
from tokenmill.assembly.quantize_k import k_codes, q2_k_codes, q3_k_codes, q6_k_codes
from tokenmill.kernels.gguf_types import BY_NAME
from tokenmill.loading.default_model import default_model_path
from tokenmill.loading.gguf import GGUFCheckpoint
from tokenmill.models.registry import gguf_architectures

K_TYPES = ("q2_k", "q3_k", "q4_k", "q5_k", "q6_k")
# the affine types' code steps across a sub-block's range; the signed types' codes below zero (-half..half-1)
LEVELS = {"q2_k": 3, "q4_k": 15, "q5_k": 31}
HALVES = {"q3_k": 4, "q6_k": 32}
SUB_BLOCK = {"q2_k": 16, "q3_k": 16, "q4_k": 32, "q5_k": 32, "q6_k": 16}


def random_weights(rows: int = 32, columns: int = 512) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(rows, columns, generator=generator) * 0.05
    weight[0, :256] = 0  # an all-zero super-block: every scale 0, no division by zero
    weight[1, :32] = 0.01  # a constant, positive sub-block: the offset stays ≤ 0
    weight[2, 5] = 3.0  # an outlier: its sub-block's scale is far above the others
    weight[3, 256:512] = torch.linspace(-1, 1, 256)
    return weight


def intended_values(weight: torch.Tensor, method: str) -> torch.Tensor:
    """The values the quantizer chose, from its scales and codes, in the dequantizer's float32 order."""
    blocks = weight.reshape(-1, 256)
    if method in HALVES:
        d, scale, codes = (q6_k_codes if method == "q6_k" else q3_k_codes)(blocks)
        return (codes * (d * scale).unsqueeze(-1)).view_as(weight)
    d, dmin, scale, minimum, codes = q2_k_codes(blocks) if method == "q2_k" else k_codes(blocks, LEVELS[method])
    return (codes * (d * scale).unsqueeze(-1) - (dmin * minimum).unsqueeze(-1)).view_as(weight)


@pytest.mark.parametrize("method", K_TYPES)
def test_bytes_decode_to_the_values_the_quantizer_chose(method):
    weight = random_weights()
    quantized = quantize_weight(weight, method)
    assert quantized.ggml_type == BY_NAME[method.upper()].type_id
    assert torch.equal(quantized.dequantize(), intended_values(weight, method))
    assert kernels.supports(quantized.ggml_type)
    assert torch.equal(kernels.dequantize_rows(quantized.blocks, quantized.ggml_type, weight.shape[1]),
                       quantized.dequantize())
    # an independent reader of the layout: gguf-py's reference dequantizer
    theirs = quants.dequantize(quantized.blocks.numpy(), GGMLQuantizationType[method.upper()])
    assert torch.equal(torch.from_numpy(np.ascontiguousarray(theirs)).view_as(weight), quantized.dequantize())


def format_rms_bound(weight: torch.Tensor, method: str) -> float:
    """Rounding to a uniform grid of step s errs by s/√12 RMS; the step the format allows a sub-block is its
    span over the code steps (Q2_K / Q4_K / Q5_K: max - min(min, 0), the offset is ≤ 0; Q3_K / Q6_K: the
    largest magnitude over the `half` codes below zero). Factor 1.25: the sub-block steps and offsets are
    themselves rounded to multiples of the super-block scale (4, 6 or 8 bits), which moves each a little."""
    sub_blocks = weight.reshape(-1, SUB_BLOCK[method])
    if method in HALVES:
        step = sub_blocks.abs().amax(1) / HALVES[method]
    else:
        step = (sub_blocks.amax(1) - sub_blocks.amin(1).clamp(max=0)) / LEVELS[method]
    return 1.25 * math.sqrt(float((step ** 2).mean()) / 12)


def rms_error(weight: torch.Tensor, method: str) -> float:
    return float(((quantize_weight(weight, method).dequantize() - weight) ** 2).mean().sqrt())


@pytest.fixture(scope="module")
def smollm2_matrices() -> dict[str, torch.Tensor]:
    """Real weights: SmolLM2's (dequantized Q4_1), as rows of 256 so that every matrix takes the k-quants."""
    state = GGUFCheckpoint(default_model_path(), gguf_architectures()).state_dict(progress=False)
    names = ("model.layers.0.mlp.down_proj.weight", "model.layers.10.self_attn.v_proj.weight",
             "model.layers.29.mlp.up_proj.weight")
    return {name: state[name].reshape(-1, 256)[:2048] for name in names}


def test_error_within_the_format_step_and_ordered_by_bits(smollm2_matrices):
    for label, weight in {"random": random_weights(256, 1024), **smollm2_matrices}.items():
        errors = {method: rms_error(weight, method) for method in K_TYPES}
        for method, error in errors.items():
            assert error <= format_rms_bound(weight, method), (label, method, error)
        assert errors["q6_k"] < errors["q5_k"] < errors["q4_k"] < errors["q3_k"] < errors["q2_k"], (label, errors)


def test_widths_not_of_whole_super_blocks_take_llama_cpp_fallbacks():
    weight = torch.randn(8, 96, generator=torch.Generator().manual_seed(1))
    for method, fallback in (("q2_k", "q4_0"), ("q3_k", "q4_0"), ("q4_k", "q5_0"), ("q5_k", "q5_1"), ("q6_k", "q8_0")):
        quantized = quantize_weight(weight, method)
        assert quantized.ggml_type == BY_NAME[fallback.upper()].type_id
        assert torch.equal(quantized.blocks, quantize_weight(weight, fallback).blocks)
