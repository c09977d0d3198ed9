"""Window caches on tensors: each key stores its own position, so what every query sees can be read off and
compared with the window rule (a query at p sees keys k <= p with k > p - recent, or k < sinks)."""

from types import SimpleNamespace

import pytest
import torch

from tokenmill.cache.base import causal_over_seen
from tokenmill.cache.sliding import SinkCache, SlidingWindowCache, WindowLayer


def _positions(start, count, batch=1):
    keys = torch.arange(start, start + count, dtype=torch.float32)[None, None, :, None].repeat(batch, 1, 1, 1)
    return keys, keys + 0.5


def _expected(p, recent, sinks):
    return {k for k in range(p + 1) if k > p - recent or k < sinks}


@pytest.mark.parametrize("counts", [(5, 1, 1, 3, 1, 1, 2), (1, 1, 1, 1, 1, 1, 1, 2)])
@pytest.mark.parametrize("window, sinks", [(4, 0), (5, 1), (6, 2)])
def test_every_query_sees_exactly_its_window(window, sinks, counts):
    layer = WindowLayer(window, sinks)
    recent = window - sinks
    seen = 0
    for count in counts:
        keys, values = _positions(seen, count)
        full_keys, full_values = layer.update(keys, values)
        assert torch.equal(full_values, full_keys + 0.5)
        columns = full_keys[0, 0, :, 0].long().tolist()
        mask, causal = layer.visible_mask(None, True, count)
        assert causal is False
        for q in range(count):
            p = seen + q
            if mask is None:
                visible = set(columns)
            else:
                visible = {k for k, ok in zip(columns, mask[0, 0, q].tolist()) if ok}
            assert visible == _expected(p, recent, sinks), (count, p)
        seen += count
        assert layer.seq_length() == seen
        assert layer.keys.shape[-2] == min(seen, sinks + recent - 1) == layer.values.shape[-2]
        assert layer.keys[0, 0, :, 0].long().tolist() == sorted(_expected(seen, recent, sinks) - {seen})


def test_a_padding_mask_is_kept_inside_the_window():
    layer = WindowLayer(4)
    layer.update(*_positions(0, 3))
    layer.update(*_positions(3, 1))
    keys, _ = layer.update(*_positions(4, 2))
    allowed = causal_over_seen(None, 4, 2, torch.device("cpu")).clone()
    allowed[..., 2] = False  # position 2 is padding
    mask, _ = layer.visible_mask(allowed, True, 2)
    columns = keys[0, 0, :, 0].long().tolist()
    visible = [{k for k, ok in zip(columns, row) if ok} for row in mask[0, 0].tolist()]
    assert visible == [{1, 3, 4}, {3, 4, 5}]


@pytest.mark.parametrize("window, sinks, message", [
    (None, 0, "a window cache needs window >= 2, got None"),
    (1, 0, "a window cache needs window >= 2, got 1"),
    (4, -1, "num_sink_tokens must be in [0, window - 1), got -1 for window 4"),
    (4, 3, "num_sink_tokens must be in [0, window - 1), got 3 for window 4"),
])
def test_bad_windows_are_refused_by_name(window, sinks, message):
    with pytest.raises(ValueError) as error:
        WindowLayer(window, sinks)
    assert str(error.value) == message


def test_smallest_windows_are_accepted():
    assert WindowLayer(2).recent == 2 and WindowLayer(4, 2).recent == 2


def test_crop_before_anything_is_dropped_and_refused_after():
    layer = WindowLayer(8)
    assert layer.batch_size() == 0
    layer.crop(3)
    layer.reorder(torch.tensor([0]))
    assert layer.seq_length() == 0 and layer.keys is None
    keys, values = _positions(0, 5, batch=2)
    keys[1] += 100
    layer.update(keys, values)
    layer.crop(6)
    assert layer.seq_length() == 5
    layer.crop(3)
    assert layer.seq_length() == 3 and layer.keys[0, 0, :, 0].tolist() == [0.0, 1.0, 2.0]
    assert layer.values.shape[-2] == 3
    layer.reorder(torch.tensor([1, 0, 1]))
    assert layer.batch_size() == 3 and layer.keys[:, 0, 0, 0].tolist() == [100.0, 0.0, 100.0]
    assert layer.values[:, 0, 0, 0].tolist() == [0.5, 0.5, 0.5]
    layer.update(*_positions(3, 8, batch=3))  # 11 seen, 7 stored
    with pytest.raises(ValueError) as error:
        layer.crop(2)
    assert str(error.value) == "a window cache that has dropped positions cannot be cropped"


def test_window_caches_read_their_sizes():
    assert SlidingWindowCache(SimpleNamespace(sliding_window=16)).layer(0).window == 16
    cache = SlidingWindowCache(SimpleNamespace(sliding_window=16), sliding_window=8)
    assert cache.sliding_window == 8 and cache.layer(1).window == 8 and cache.layer(1).sinks == 0
    for config in (None, SimpleNamespace()):
        with pytest.raises(ValueError) as error:
            SlidingWindowCache(config)
        assert str(error.value) == "SlidingWindowCache needs sliding_window (or a config that has one)"
    with pytest.raises(ValueError):
        SlidingWindowCache(sliding_window=1)  # refused when built, not at the first forward
    sink = SinkCache()
    assert (sink.window_length, sink.num_sink_tokens) == (256, 4)
    layer = SinkCache(window_length=10, num_sink_tokens=3).layer(0)
    assert (layer.window, layer.sinks) == (10, 3)
    with pytest.raises(ValueError):
        SinkCache(window_length=4, num_sink_tokens=3)


def test_a_decode_step_keeps_the_padding_mask_and_a_wider_mask_is_read_from_its_end():
    layer = WindowLayer(8)
    layer.update(*_positions(0, 4))
    keys, _ = layer.update(*_positions(4, 1))
    allowed = torch.ones(1, 1, 1, 5, dtype=torch.bool)
    allowed[..., 1] = False  # position 1 is padding
    mask, _ = layer.visible_mask(allowed, True, 1)
    assert {k for k, ok in zip(keys[0, 0, :, 0].long().tolist(), mask[0, 0, 0].tolist()) if ok} == {0, 2, 3, 4}
    wider = torch.cat([torch.zeros(1, 1, 1, 2, dtype=torch.bool), allowed], dim=-1)  # two columns before position 0
    assert torch.equal(layer.visible_mask(wider, True, 1)[0], mask)


def test_an_empty_window_layer_holds_no_bytes():
    assert WindowLayer(4).nbytes() == 0 and WindowLayer(4).tensors() == []
