"""The cache protocol: LayerCache's defaults, causal_over_seen, and Cache's per-layer bookkeeping, on tensors."""

import pytest
import torch

from tokenmill.cache.base import Cache, LayerCache, causal_over_seen
from tokenmill.cache.dynamic import DynamicLayer


def _kv(batch=2, heads=1, length=3, dim=2, start=0):
    keys = torch.arange(start, start + batch * heads * length * dim, dtype=torch.float32)
    keys = keys.reshape(batch, heads, length, dim)
    return keys, -keys


def test_layer_cache_defaults():
    layer = LayerCache()
    with pytest.raises(NotImplementedError):
        layer.update(*_kv())
    with pytest.raises(NotImplementedError):
        layer.seq_length()
    with pytest.raises(NotImplementedError) as error:
        layer.crop(1)
    assert str(error.value) == "LayerCache cannot be cropped"
    with pytest.raises(NotImplementedError) as error:
        layer.reorder(torch.tensor([0]))
    assert str(error.value) == "LayerCache cannot be reordered"
    assert layer.tensors() == [] and layer.nbytes() == 0
    assert layer.prefetch() is None and layer.release() is None
    allowed = torch.tensor([[[[True, False]]]])
    assert layer.visible_columns(allowed) is allowed
    assert layer.visible_mask(None, True, 1) == (None, True)
    assert layer.visible_mask(allowed, True, 1) == (allowed, False)


def test_update_slots_is_update_without_slots():
    layer = DynamicLayer()
    keys, values = _kv()
    got_keys, got_values, slots = layer.update_slots(keys, values)
    assert torch.equal(got_keys, keys) and torch.equal(got_values, values) and slots is None
    assert layer.nbytes() == 2 * keys.numel() * 4


def test_causal_over_seen_is_the_causal_mask_after_the_past():
    expected = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(causal_over_seen(None, 2, 3, torch.device("cpu")), expected[None, None])
    allowed = torch.ones(1, 1, 3, 5, dtype=torch.bool)
    assert causal_over_seen(allowed, 2, 3, torch.device("cpu")) is allowed


def test_cache_makes_layers_lazily_and_delegates():
    made = []

    def factory(layer_idx):
        made.append(layer_idx)
        return DynamicLayer()

    cache = Cache(factory)
    assert len(cache) == 0 and cache.get_seq_length() == 0 and cache.nbytes() == 0
    cache.batch_repeat_interleave(2)  # no layers yet: nothing to repeat
    keys, values = _kv()
    got_keys, _ = cache.update(keys, values, 2)
    assert made == [0, 1, 2] and len(cache) == 3 and torch.equal(got_keys, keys)
    assert cache.layer(2) is cache.layers[2] and made == [0, 1, 2]
    assert cache.get_seq_length(2) == 3 and cache.get_seq_length(0) == 0 and cache.get_seq_length(5) == 0
    cache.update(*_kv(length=1, start=100), 0)
    assert cache.nbytes() == 2 * 4 * (keys.numel() + 2 * 2)


def test_cache_crop_reorder_and_repeat():
    cache = Cache(lambda layer_idx: DynamicLayer())
    keys, values = _kv(length=4)
    for layer_idx in range(2):
        cache.update(keys, values, layer_idx)
    cache.crop(-1)  # negative: drop that many from the end
    assert [layer.seq_length() for layer in cache.layers] == [3, 3]
    cache.crop(2)
    assert cache.get_seq_length() == 2 and torch.equal(cache.layers[1].keys, keys[:, :, :2])
    cache.reorder_cache(torch.tensor([1, 0]))
    assert torch.equal(cache.layers[0].keys, keys[[1, 0], :, :2])
    cache.batch_select_indices(torch.tensor([1]))
    assert torch.equal(cache.layers[1].keys, keys[[0], :, :2])
    cache.reorder_cache(torch.tensor([0, 0]))
    cache.batch_repeat_interleave(2)
    assert cache.layers[0].batch_size() == 4 and torch.equal(cache.layers[0].values, values[[0] * 4, :, :2])


def test_default_nbytes_counts_the_stored_tensors():
    class KeysOnly(LayerCache):
        keys = torch.zeros(2, 3, dtype=torch.float16)
        values = None

    assert KeysOnly().nbytes() == 2 * 3 * 2 and len(KeysOnly().tensors()) == 1


def test_first_layer_length_crop_to_zero_and_repeat_of_one_layer():
    cache = Cache(lambda layer_idx: DynamicLayer())
    cache.update(*_kv(length=3), 0)
    cache.update(*_kv(length=1), 1)
    assert cache.get_seq_length() == 3
    cache.crop(0)
    assert [layer.seq_length() for layer in cache.layers] == [0, 0]
    single = Cache(lambda layer_idx: DynamicLayer())
    single.update(*_kv(batch=2), 0)
    single.batch_repeat_interleave(3)
    assert single.layers[0].batch_size() == 6
