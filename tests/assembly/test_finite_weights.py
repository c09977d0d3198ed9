"""Corrupt tensor data that would make every logit NaN is refused at load, naming the tensor (so the layer)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType
from gguf.quants import quantize
from safetensors.torch import load_file, save_file

from tokenmill import AutoModelForCausalLM
from tokenmill.assembly.finite_weights import HALF_SCALE_OFFSETS, check_finite_weights
from tokenmill.errors import CheckpointError
from tokenmill.layers.quantized_linear import QuantizedWeight
from tokenmill.loading import dequant

from tiny_gguf import FFN, HIDDEN, tiny_llama_tensors, write_tiny_llama

NAN_HALF = b"\x00\x7e"  # float16 NaN, little-endian
INF_HALF = b"\x00\x7c"
TYPE_IDS = {info.name: type_id for type_id, info in dequant.GGML_TYPES.items()}


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_a_non_finite_dense_weight_names_its_tensor_and_row(tmp_path, value):
    down = tiny_llama_tensors()["blk.1.ffn_down.weight"].copy()
    down[7, 3] = value
    path = write_tiny_llama(tmp_path / "corrupt.gguf", tensors={"blk.1.ffn_down.weight": down})
    with pytest.raises(CheckpointError, match=r"corrupt.gguf: weight model.layers.1.mlp.down_proj.weight holds NaN "
                                              r"or infinite values \(first in row 7\)"):
        AutoModelForCausalLM.from_pretrained(path, progress=False)


@pytest.mark.parametrize("keep_quantized", [True, False])
def test_a_nan_scale_in_a_q8_0_block(tmp_path, keep_quantized):
    """The GGUF blocks' float16 scale is the only place a quantized weight can go non-finite."""
    gate = quantize(tiny_llama_tensors()["blk.0.ffn_gate.weight"], GGMLQuantizationType.Q8_0)
    gate[5, 0:2] = np.frombuffer(NAN_HALF, np.uint8)  # row 5: one block of 32, its scale first
    path = write_tiny_llama(tmp_path / "corrupt.gguf", tensors={"blk.0.ffn_gate.weight": (gate, GGMLQuantizationType.Q8_0)})
    with pytest.raises(CheckpointError, match=r"weight model.layers.0.mlp.gate_proj.weight holds NaN or infinite "
                                              r"values \(first in row 5\)"):
        AutoModelForCausalLM.from_pretrained(path, progress=False, keep_quantized=keep_quantized)


def test_safetensors_with_an_inf(tmp_path, tiny_llama):
    folder = tmp_path / "m"
    folder.mkdir()
    for item in tiny_llama[1].iterdir():
        (folder / item.name).write_bytes(item.read_bytes())
    tensors = load_file(folder / "model.safetensors")
    tensors["model.embed_tokens.weight"][11, 0] = float("inf")
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    assert json.loads((folder / "config.json").read_text())["num_hidden_layers"] == 2
    with pytest.raises(CheckpointError, match=r"model.embed_tokens.weight holds NaN or infinite values "
                                              r"\(first in row 11\)"):
        AutoModelForCausalLM.from_pretrained(folder, progress=False)


@pytest.mark.parametrize("type_name", sorted(HALF_SCALE_OFFSETS))
def test_scale_offsets_match_the_dequantizers(type_name):
    """Every listed offset is a field the dequantizer scales by (a NaN there makes values NaN), and a NaN or
    inf there is found in its row; zero blocks are finite."""
    info = dequant.GGML_TYPES[TYPE_IDS[type_name]]
    rows, in_features = 4, info.block_elements * 2
    for offset in HALF_SCALE_OFFSETS[type_name]:
        for bad in (NAN_HALF, INF_HALF):
            blocks = torch.zeros(rows, 2 * info.block_bytes, dtype=torch.uint8)
            weight = QuantizedWeight(blocks, TYPE_IDS[type_name], in_features)
            assert check_finite_weights("f", {"w": weight}) is None
            blocks[2, info.block_bytes + offset:info.block_bytes + offset + 2] = torch.frombuffer(bytearray(bad), dtype=torch.uint8)
            values = dequant.dequantize(blocks.reshape(-1), TYPE_IDS[type_name], (rows, in_features))
            assert not torch.isfinite(values[2]).all() and torch.isfinite(values[[0, 1, 3]]).all()
            with pytest.raises(CheckpointError, match=r"weight w holds NaN or infinite values \(first in row 2\)"):
                check_finite_weights("f", {"w": weight})


def test_large_finite_values_are_not_mistaken_for_overflow():
    """Their float32 sum overflows to inf; the exact test behind it finds every value finite."""
    check_finite_weights("f", {"w": torch.full((4, HIDDEN), 3e38), "h": torch.full((FFN,), 6e4, dtype=torch.float16)})
