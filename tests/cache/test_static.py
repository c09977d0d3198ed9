"""The static cache on tensors: preallocated slots written in place, the masks over them, and its refusals."""

from types import SimpleNamespace

import pytest
import torch

from tokenmill.cache.static import StaticCache, StaticLayer


def _kv(length, start=0, batch=2, heads=1, dim=2):
    keys = torch.arange(start, start + batch * heads * length * dim, dtype=torch.float32) + 1
    keys = keys.reshape(batch, heads, length, dim)
    return keys, -keys


@pytest.mark.parametrize("length", [None, 0, -1])
def test_a_static_layer_needs_a_positive_length(length):
    with pytest.raises(ValueError) as error:
        StaticLayer(length)
    assert str(error.value) == f"a static cache needs a positive max_cache_len, got {length!r}"


def test_updates_fill_slots_in_place():
    layer = StaticLayer(5)
    assert layer.batch_size() == 0 and layer.seq_length() == 0
    first, second = _kv(2), _kv(1, start=100)
    layer.update(*first)
    keys, values = layer.update(*second)
    assert keys.shape == (2, 1, 5, 2) and layer.seq_length() == 3 and layer.batch_size() == 2
    assert torch.equal(keys[:, :, :3], torch.cat([first[0], second[0]], dim=2))
    assert torch.equal(values[:, :, :3], torch.cat([first[1], second[1]], dim=2))
    assert not keys[:, :, 3:].any() and not values[:, :, 3:].any()
    assert layer.filled.tolist() == [True, True, True, False, False]


def test_dtype_and_batch_are_kept_and_checked():
    layer = StaticLayer(4, batch_size=2, dtype=torch.float64, device="cpu")
    keys, _ = layer.update(*_kv(1))
    assert keys.dtype == torch.float64 and layer.values.dtype == torch.float64 and layer.filled.dtype == torch.bool
    with pytest.raises(ValueError) as error:
        StaticLayer(4, batch_size=3).update(*_kv(1))
    assert str(error.value) == "static cache was built for batch size 3, got keys for 2 rows"


def test_a_full_cache_refuses_more():
    layer = StaticLayer(3)
    layer.update(*_kv(2))
    layer.update(*_kv(1))  # exactly full
    with pytest.raises(ValueError) as error:
        layer.update(*_kv(1))
    assert str(error.value) == ("static cache is full: 3 positions stored, 1 more do not fit in max_cache_len=3; "
                                "build it with a larger max_cache_len")


def test_masks_over_the_slots():
    layer = StaticLayer(5)
    layer.update(*_kv(3))
    mask, causal = layer.visible_mask(None, True, 3)
    expected = torch.tensor([[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0]], dtype=torch.bool)
    assert torch.equal(mask, expected[None, None]) and causal is False
    layer.update(*_kv(1))
    mask, causal = layer.visible_mask(None, True, 1)  # one query: every filled slot
    assert mask.tolist() == [[[[True, True, True, True, False]]]] and causal is False
    allowed = torch.tensor([[[[False, True, True, True]]], [[[True, True, True, True]]]])  # row 0 left-padded
    mask, _ = layer.visible_mask(allowed, True, 1)
    assert mask.tolist() == [[[[False, True, True, True, False]]], [[[True, True, True, True, False]]]]


def test_crop_reorder_and_reset():
    layer = StaticLayer(4)
    keys, _ = _kv(3)
    layer.crop(2)  # nothing stored yet
    layer.update(keys, -keys)
    layer.crop(5)
    assert layer.seq_length() == 3
    layer.crop(2)
    assert layer.seq_length() == 2 and layer.filled.tolist() == [True, True, False, False]
    layer.reorder(torch.tensor([1, 1, 0]))
    assert layer.batch_size() == 3 and layer.batch == 3 and torch.equal(layer.keys[:, :, :3], keys[[1, 1, 0]])
    assert torch.equal(layer.values[:, :, :3], -keys[[1, 1, 0]])
    layer.reset()
    assert layer.seq_length() == 0 and not layer.filled.any()
    layer.crop(-3)
    assert layer.seq_length() == 0
    StaticLayer(2).reorder(torch.tensor([0]))  # nothing stored: nothing to reorder


def test_static_cache_length_from_argument_or_config():
    assert StaticCache(SimpleNamespace(max_position_embeddings=64), max_cache_len=8).max_cache_len == 8
    cache = StaticCache(SimpleNamespace(max_position_embeddings=64), batch_size=2, dtype=torch.float64)
    layer = cache.layer(0)
    assert cache.max_cache_len == 64 and (layer.max_cache_len, layer.batch, layer.dtype) == (64, 2, torch.float64)
    for config in (None, SimpleNamespace()):
        with pytest.raises(ValueError) as error:
            StaticCache(config)
        assert str(error.value) == "StaticCache needs max_cache_len (or a config with max_position_embeddings)"
    cache = StaticCache(max_cache_len=4, device="cpu")
    for layer_idx in range(2):
        cache.update(*_kv(2), layer_idx)
    cache.reset()
    assert [layer.seq_length() for layer in cache.layers] == [0, 0]
    assert cache.layers[1].device == "cpu"


def test_one_slot_is_enough_and_an_empty_layer_holds_no_bytes():
    layer = StaticLayer(1)
    assert layer.nbytes() == 0 and layer.tensors() == []
    layer.update(*_kv(1))
    assert layer.seq_length() == 1


def test_two_queries_see_causally():
    layer = StaticLayer(4)
    layer.update(*_kv(2))
    mask, _ = layer.visible_mask(None, True, 2)
    assert mask.tolist() == [[[[True, False, False, False], [True, True, False, False]]]]


def test_write_at_a_position_tensor_then_advance():
    """A captured step writes at a device tensor's slot without touching the length; advance counts it after."""
    from tokenmill.cache.static import StaticCache

    cache = StaticCache(max_cache_len=6)
    keys = torch.arange(2 * 1 * 3 * 2, dtype=torch.float32).view(2, 1, 3, 2)
    cache.update(keys, keys + 100, 0)
    slot = torch.tensor([3])
    cache.write_at(slot)
    step = torch.full((2, 1, 1, 2), -7.0)
    stored_keys, stored_values = cache.update(step, step - 1, 0)
    assert cache.get_seq_length() == 3  # untouched by the update
    assert torch.equal(stored_keys[:, :, 3], step[:, :, 0]) and torch.equal(stored_values[:, :, 3], step[:, :, 0] - 1)
    assert cache.layers[0].filled.tolist() == [True, True, True, True, False, False]
    slot.fill_(4)  # the same tensor refilled: the next write goes there
    cache.update(step * 2, step, 0)
    assert torch.equal(cache.layers[0].keys[:, :, 4], step[:, :, 0] * 2)
    cache.write_at(None)
    cache.advance(2)
    assert cache.get_seq_length() == 5
    cache.update(step * 3, step, 0)  # back to writing at the length
    assert torch.equal(cache.layers[0].keys[:, :, 5], step[:, :, 0] * 3) and cache.get_seq_length() == 6
