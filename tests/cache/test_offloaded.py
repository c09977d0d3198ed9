"""The offloaded cache on tensors: exact like the dynamic one, host copies, and when a layer is prefetched."""

import pytest
import torch

from tokenmill.cache.offloaded import OffloadedCache, OffloadedLayer, is_out_of_memory


def _kv(length, start=0, batch=2):
    keys = torch.arange(start, start + batch * length * 2, dtype=torch.float32).reshape(batch, 1, length, 2)
    return keys, -keys


def test_updates_return_everything_and_keep_host_copies():
    cache = OffloadedCache()
    assert cache.host_device == torch.device("cpu") and cache.compute_device is None
    layer = cache.layer(0)
    assert layer.seq_length() == 0 and layer.batch_size() == 0
    chunks = [_kv(3), _kv(1, start=100), _kv(2, start=200)]
    for count, (keys, values) in enumerate(chunks, 1):
        full_keys, full_values = cache.update(keys, values, 0)
        assert torch.equal(full_keys, torch.cat([k for k, _ in chunks[:count]], dim=2))
        assert torch.equal(full_values, torch.cat([v for _, v in chunks[:count]], dim=2))
        assert layer._on_device is None  # released after use
    assert cache.compute_device == torch.device("cpu")
    assert layer.seq_length() == 6 and layer.batch_size() == 2 and layer.keys.device == cache.host_device


def test_prefetch_only_when_there_is_something_and_somewhere_to_bring_it():
    cache = OffloadedCache()
    layer = cache.layer(0)
    layer.prefetch()  # nothing stored, no compute device yet
    assert layer._on_device is None
    layer.update(*_kv(2))
    cache.compute_device = None
    layer.prefetch()
    assert layer._on_device is None
    layer.prefetch(torch.device("cpu"))
    first = layer._on_device
    assert torch.equal(first[0], layer.keys) and torch.equal(first[1], layer.values)
    layer.prefetch(torch.device("cpu"))
    assert layer._on_device is first  # already there: not copied again
    layer.release()
    assert layer._on_device is None
    cache.compute_device = torch.device("cpu")
    layer.prefetch()
    assert layer._on_device is not None


def test_the_next_layer_is_prefetched_only_across_devices():
    same = OffloadedCache()
    for layer_idx in range(3):
        same.update(*_kv(2), layer_idx)
    same.update(*_kv(1), 0)
    assert same.layers[1]._on_device is None  # host and compute are one device: no copy
    across = OffloadedCache(host_device="cpu:0")  # a distinct device that is still the CPU
    for layer_idx in range(3):
        across.update(*_kv(2), layer_idx)
    across.update(*_kv(1), 1)
    assert across.layers[2]._on_device is not None and across.layers[0]._on_device is None
    assert torch.equal(across.layers[2]._on_device[0], across.layers[2].keys)
    across.update(*_kv(1), 2)  # the last layer has no next one
    assert across.layers[2]._on_device is None


def test_crop_and_reorder_release_the_device_copy():
    cache = OffloadedCache()
    keys, values = _kv(4)
    layer = cache.layer(0)
    layer.crop(2)
    layer.reorder(torch.tensor([0]))
    assert layer.keys is None
    cache.update(keys, values, 0)
    layer.prefetch(torch.device("cpu"))
    layer.crop(3)
    assert layer._on_device is None and torch.equal(layer.keys, keys[..., :3, :])
    assert torch.equal(layer.values, values[..., :3, :])
    layer.prefetch(torch.device("cpu"))
    layer.reorder(torch.tensor([1, 0, 1]))
    assert layer._on_device is None and torch.equal(layer.keys, keys[[1, 0, 1], :, :3])
    assert torch.equal(layer.values, values[[1, 0, 1], :, :3])
    assert isinstance(layer, OffloadedLayer) and layer.layer_idx == 0 and layer.cache is cache


@pytest.mark.parametrize("error, expected", [
    (torch.OutOfMemoryError("CUDA out of memory"), True),
    (MemoryError(), True),
    (RuntimeError("CUDA error: out of memory"), True),
    (RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 bytes"), True),
    (RuntimeError("Out Of Memory"), True),
    (RuntimeError("shape mismatch"), False),
    (ValueError("out of memory"), False),
])
def test_out_of_memory_is_recognised(error, expected):
    assert is_out_of_memory(error) is expected


def test_an_empty_layer_holds_no_bytes():
    assert OffloadedCache().layer(0).nbytes() == 0 and OffloadedCache().layer(0).tensors() == []
