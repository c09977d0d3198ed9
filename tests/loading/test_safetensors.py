"""Folder weights: single and sharded safetensors read alike, with a progress bar sized from the headers."""

from __future__ import annotations

import torch

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
