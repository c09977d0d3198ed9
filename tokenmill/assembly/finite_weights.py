"""Non-finite weights are refused at load time, naming the tensor (and so the layer) that holds them.

A NaN or inf in one weight makes every logit NaN, and argmax over NaN picks token 0 or <|endoftext|>: the
model would answer garbage silently. Checking once here costs one read of the weights at load and nothing
per decoding step. GGUF blocks (`QuantizedWeight`) can only go non-finite through their float16 scales, so
only those two-byte fields are read; any other block type is dequantized a slice of rows at a time.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from ..errors import CheckpointError
from ..layers.quantized_linear import QuantizedWeight
from ..loading import dequant

CHUNK_ELEMENTS = 1 << 24  # 64 MB of float32 at a time: the isfinite mask of a whole embedding would be as large
# ggml block type -> byte offsets of its float16 scales (the integer quants in between are always finite)
HALF_SCALE_OFFSETS = {"Q8_0": (0,), "Q4_0": (0,), "Q4_1": (0, 2), "Q5_0": (0,), "Q5_1": (0, 2),
                      "Q2_K": (80, 82), "Q3_K": (108,), "Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,),
                      "IQ4_NL": (0,), "IQ4_XS": (0,)}
HALF_EXPONENT = 0x7C00  # all exponent bits set: inf or NaN


def check_finite_weights(source: Path, weights: dict, after_check=None) -> None:
    """Raise CheckpointError naming the first weight holding NaN or inf; after_check(weight) after each one."""
    for name, weight in weights.items():
        if isinstance(weight, QuantizedWeight):
            row = _first_bad_block_row(weight)
        elif weight.is_floating_point():
            row = _first_bad_row(weight)
        else:
            continue
        if row is not None:
            raise CheckpointError(source, f"weight {name} holds NaN or infinite values (first in row {row}): "
                                          f"the tensor data is corrupt")
        if after_check is not None:
            after_check(weight)


def _first_bad_row(tensor: torch.Tensor) -> int | None:
    flat = tensor.reshape(-1)
    row_length = tensor.shape[-1] if tensor.dim() > 1 else 1
    for start in range(0, flat.numel(), CHUNK_ELEMENTS):
        chunk = flat[start:start + CHUNK_ELEMENTS]
        # a finite sum proves every element finite (NaN and inf absorb) at a tenth of isfinite's cost here;
        # only a sum that is not finite (corruption, or finite values overflowing) pays for the exact test
        if math.isfinite(float(chunk.sum(dtype=torch.float32))):
            continue
        if not bool(torch.isfinite(chunk).all()):
            first = int(torch.nonzero(~torch.isfinite(chunk))[0, 0]) + start
            return first // row_length
    return None


def _first_bad_block_row(weight: QuantizedWeight) -> int | None:
    offsets = HALF_SCALE_OFFSETS.get(dequant.type_name(weight.ggml_type))
    if offsets is None:  # no scale table for this type: look at the values themselves
        rows_per_chunk = max(1, CHUNK_ELEMENTS // max(weight.in_features, 1))
        for start in range(0, weight.blocks.shape[0], rows_per_chunk):
            part = QuantizedWeight(weight.blocks[start:start + rows_per_chunk], weight.ggml_type, weight.in_features)
            row = _first_bad_row(part.dequantize())
            if row is not None:
                return start + row
        return None
    block_bytes = dequant.GGML_TYPES[weight.ggml_type].block_bytes
    rows = weight.blocks.shape[0]
    blocks = weight.blocks.reshape(rows, -1, block_bytes)
    halves = blocks.view(torch.int16) if _viewable_as_int16(blocks) else None
    for offset in offsets:
        if halves is not None:  # the scale as one int16 per block, read in place
            bits = halves[..., offset // 2]
        else:
            bits = blocks[..., offset].to(torch.int16) | (blocks[..., offset + 1].to(torch.int16) << 8)
        bad = (bits & HALF_EXPONENT) == HALF_EXPONENT
        if bool(bad.any()):
            return int(torch.nonzero(bad.any(dim=1))[0, 0])
    return None


def _viewable_as_int16(blocks: torch.Tensor) -> bool:
    return blocks.is_contiguous() and blocks.shape[-1] % 2 == 0 and blocks.storage_offset() % 2 == 0 \
        and blocks.data_ptr() % 2 == 0
