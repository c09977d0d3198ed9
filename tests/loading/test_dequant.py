"""Every dequantizer is bit-identical to gguf-py's reference `gguf.quants.dequantize` on random blocks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType, quants

from tokenmill.loading import dequant

# byte offsets of each type's float16 scale fields: random bytes there could be inf/NaN, so they get real halves
HALF_FIELDS = {
    "Q8_0": [0], "Q4_0": [0], "Q4_1": [0, 2], "Q5_0": [0], "Q5_1": [0, 2],
    "Q2_K": [80, 82], "Q3_K": [108], "Q4_K": [0, 2], "Q5_K": [0, 2], "Q6_K": [208],
    "IQ4_NL": [0], "IQ4_XS": [0],
}
TYPE_IDS = {info.name: type_id for type_id, info in dequant.GGML_TYPES.items()}


def random_blocks(name: str, n_blocks: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    info = dequant.GGML_TYPES[TYPE_IDS[name]]
    blocks = rng.integers(0, 256, size=(n_blocks, info.block_bytes), dtype=np.uint8)
    for offset in HALF_FIELDS[name]:
        halves = rng.uniform(-3, 3, size=(n_blocks, 1)).astype(np.float16)
        blocks[:, offset:offset + 2] = halves.view(np.uint8)
    return blocks


@pytest.mark.parametrize("name", sorted(HALF_FIELDS))
def test_block_types_match_gguf_py(name):
    blocks = random_blocks(name, 300)
    expected = torch.from_numpy(quants.dequantize(blocks, GGMLQuantizationType[name]))
    got = dequant.dequantize(torch.from_numpy(blocks.reshape(-1)), TYPE_IDS[name], tuple(expected.shape))
    assert got.dtype == torch.float32
    assert torch.equal(got, expected)


@pytest.mark.parametrize("name", ["Q4_1", "Q6_K"])
def test_chunked_path_matches(name, monkeypatch):
    """Tensors larger than one chunk are processed piecewise into one output."""
    monkeypatch.setattr(dequant, "CHUNK_ELEMENTS", 1000)
    blocks = random_blocks(name, 97, seed=1)
    expected = torch.from_numpy(quants.dequantize(blocks, GGMLQuantizationType[name]))
    got = dequant.dequantize(torch.from_numpy(blocks.reshape(-1)), TYPE_IDS[name], tuple(expected.shape))
    assert torch.equal(got, expected)


@pytest.mark.parametrize("name", ["F32", "F16", "BF16"])
def test_plain_float_types(name):
    rng = np.random.default_rng(2)
    values = rng.standard_normal((8, 16)).astype(np.float32)
    if name == "F16":
        stored = values.astype(np.float16).view(np.uint8)
    elif name == "BF16":
        stored = quants.quantize(values, GGMLQuantizationType.BF16)
    else:
        stored = values.view(np.uint8)
    expected = torch.from_numpy(np.asarray(quants.dequantize(stored, GGMLQuantizationType[name]), dtype=np.float32))
    got = dequant.dequantize(torch.from_numpy(np.ascontiguousarray(stored).reshape(-1)), TYPE_IDS[name], (8, 16))
    assert torch.equal(got, expected.reshape(8, 16))


def test_output_dtype_is_a_cast_of_float32():
    blocks = random_blocks("Q8_0", 40)
    raw = torch.from_numpy(blocks.reshape(-1))
    exact = dequant.dequantize(raw, TYPE_IDS["Q8_0"], (40, 32))
    for dtype in (torch.bfloat16, torch.float16):
        assert torch.equal(dequant.dequantize(raw, TYPE_IDS["Q8_0"], (40, 32), dtype), exact.to(dtype))


def test_sizes_and_support():
    assert dequant.tensor_nbytes(TYPE_IDS["Q4_K"], 512) == 288
    assert dequant.tensor_nbytes(TYPE_IDS["Q8_0"], 64) == 68
    assert dequant.is_supported(TYPE_IDS["Q5_K"]) and not dequant.is_supported(TYPE_IDS["IQ2_XXS"])
    assert dequant.type_name(999) == "unknown type 999"
