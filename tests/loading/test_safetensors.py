"""Folder weights: single and sharded safetensors read alike, with a progress bar sized from the headers."""

from __future__ import annotations

import json
import re

import pytest
import torch

from tokenmill.errors import CheckpointError
from tokenmill.loading.safetensors import _loading_bar, read_folder_weights, weight_files


def test_sharded_and_single_read_the_same_tensors(tiny_llama, tmp_path):
    oracle, folder = tiny_llama
    oracle.save_pretrained(tmp_path, max_shard_size="20KB")
    shards = weight_files(tmp_path)
    assert len(shards) > 1
    single = read_folder_weights(folder, torch.float32, progress=False)
    sharded = read_folder_weights(tmp_path, torch.float32, progress=True)
    assert single.keys() == sharded.keys() == oracle.state_dict().keys()
    assert all(torch.equal(single[name], sharded[name]) for name in single)
    with _loading_bar(shards, True) as bar:
        assert bar.total == len(sharded) and bar.unit == "tensor"
    with _loading_bar(shards, False) as bar:
        assert bar.disable


def test_dtype_is_applied_to_float_tensors_only(tiny_llama):
    _, folder = tiny_llama
    weights = read_folder_weights(folder, torch.bfloat16, progress=False)
    assert {tensor.dtype for tensor in weights.values()} == {torch.bfloat16}


@pytest.mark.parametrize("weight_map, problem", [
    (["model.safetensors"], "weight_map must map tensor names to file names"),
    ({"w": 7}, "weight_map must map tensor names to file names"),
    ({"w": "../outside.safetensors"}, "shard names must be file names in the folder, got '../outside.safetensors'"),
    ({"w": "/etc/passwd"}, "shard names must be file names in the folder, got '/etc/passwd'"),
])
def test_a_shard_index_names_only_files_in_its_folder(tmp_path, weight_map, problem):
    index = tmp_path / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(CheckpointError, match=f"model.safetensors.index.json: invalid shard index: {re.escape(problem)}"):
        weight_files(tmp_path)
    index.write_text(json.dumps([1]))
    with pytest.raises(CheckpointError, match="invalid shard index: TypeError"):
        weight_files(tmp_path)
