"""The dynamic cache on tensors: what update returns, amortized growth that keeps contents, crop, reorder."""

import torch

from tokenmill.cache.dynamic import MIN_SPARE_COLUMNS, DynamicCache, DynamicLayer


def _kv(length, start=0, batch=2, heads=2, dim=3):
    keys = torch.arange(start, start + batch * heads * length * dim, dtype=torch.float32)
    keys = keys.reshape(batch, heads, length, dim)
    return keys, keys * 10 + 1


def test_an_empty_layer():
    layer = DynamicLayer()
    assert layer.keys is None and layer.values is None
    assert layer.seq_length() == 0 and layer.batch_size() == 0 and layer.nbytes() == 0
    layer.reorder(torch.tensor([0]))  # nothing stored: nothing to reorder
    assert layer.keys is None


def test_updates_return_everything_stored_and_growth_keeps_it():
    layer = DynamicLayer()
    chunks = [_kv(1), _kv(70, start=1000), _kv(1, start=5000), _kv(200, start=9000)]
    for count, (keys, values) in enumerate(chunks, 1):
        got_keys, got_values = layer.update(keys, values)
        assert torch.equal(got_keys, torch.cat([k for k, _ in chunks[:count]], dim=2))
        assert torch.equal(got_values, torch.cat([v for _, v in chunks[:count]], dim=2))
    assert layer.seq_length() == 272 and layer.batch_size() == 2
    assert layer.nbytes() == 2 * 2 * 2 * 272 * 3 * 4  # the stored positions, not the spare columns


def test_growth_leaves_spare_columns_in_proportion():
    layer = DynamicLayer()
    layer.update(*_kv(1))
    assert layer._key_buffer.shape[2] == layer._value_buffer.shape[2] == 1 + MIN_SPARE_COLUMNS == 65
    layer.update(*_kv(64))  # 65 columns: fits exactly, no growth
    assert layer._key_buffer.shape[2] == 65
    layer.update(*_kv(135))  # 200 needed: grows by half
    assert layer._key_buffer.shape[2] == 300


def test_crop_and_reorder():
    layer = DynamicLayer()
    keys, values = _kv(5)
    layer.update(keys, values)
    layer.crop(9)
    assert layer.seq_length() == 5
    layer.crop(3)
    assert torch.equal(layer.keys, keys[:, :, :3]) and torch.equal(layer.values, values[:, :, :3])
    layer.reorder(torch.tensor([1, 1, 0]))
    assert torch.equal(layer.keys, keys[[1, 1, 0], :, :3]) and torch.equal(layer.values, values[[1, 1, 0], :, :3])
    layer.crop(-2)
    assert layer.seq_length() == 0


def test_dynamic_cache_layers_are_dynamic():
    cache = DynamicCache(config=object())
    assert isinstance(cache.layer(1), DynamicLayer) and len(cache) == 2


def test_batch_size_is_the_rows_not_the_heads():
    layer = DynamicLayer()
    layer.update(*_kv(2, batch=1, heads=3))
    assert layer.batch_size() == 1
