"""cache_implementation names → cache objects, with transformers' spellings and the generation's options."""

from types import SimpleNamespace

import pytest
import torch

from tokenmill.cache import (DynamicCache, OffloadedCache, QuantizedCache, SinkCache, SlidingWindowCache,
                             StaticCache)
from tokenmill.cache.factory import CACHE_ALIASES, CACHE_KINDS, make_cache


def _model(**config):
    return SimpleNamespace(config=SimpleNamespace(**config), dtype=torch.float16)


@pytest.mark.parametrize("kind, expected", [
    (None, DynamicCache), ("dynamic", DynamicCache), ("offloaded", OffloadedCache), ("offload", OffloadedCache),
    ("static", StaticCache), ("hybrid", StaticCache), ("offloaded_static", StaticCache), ("sink", SinkCache),
    ("quantized", QuantizedCache), ("sliding_window", SlidingWindowCache), ("sliding", SlidingWindowCache)])
def test_each_name_builds_its_kind(kind, expected):
    assert type(make_cache(kind, _model(sliding_window=8), 2, 16)) is expected


def test_static_takes_the_generation_length_unless_the_options_say_otherwise():
    cache = make_cache("static", _model(), 3, 40)
    layer = cache.layer(0)
    assert cache.max_cache_len == 40 and (layer.batch, layer.dtype) == (3, torch.float16)
    assert make_cache("static", _model(), 3, 40, {"max_cache_len": 64}).max_cache_len == 64
    assert make_cache("static", SimpleNamespace(config=None), 1, 40).layer(0).dtype is None


def test_window_and_quantization_options():
    assert make_cache("sliding_window", _model(sliding_window=8), 1, 16).sliding_window == 8
    assert make_cache("sliding_window", _model(sliding_window=8), 1, 16, {"sliding_window": 5}).sliding_window == 5
    assert make_cache("sliding_window", _model(), 1, 16, {"sliding_window": 5}).sliding_window == 5
    with pytest.raises(ValueError) as error:
        make_cache("sliding_window", _model(), 1, 16)
    assert str(error.value) == ("cache_implementation='sliding_window' needs a window: the model config has no "
                                "sliding_window, so pass cache_config={'sliding_window': N}")
    sink = make_cache("sink", _model(), 1, 16)
    assert (sink.window_length, sink.num_sink_tokens) == (256, 4)
    sink = make_cache("sink", _model(), 1, 16, {"window_length": 10, "num_sink_tokens": 2})
    assert (sink.window_length, sink.num_sink_tokens) == (10, 2)
    quantized = make_cache("quantized", _model(), 1, 16)
    assert (quantized.nbits, quantized.residual_length, quantized.q_group_size) == (8, 32, None)
    quantized = make_cache("quantized", _model(), 1, 16, {"nbits": 4, "residual_length": 3, "q_group_size": 16})
    assert (quantized.nbits, quantized.residual_length, quantized.q_group_size) == (4, 3, 16)


def test_an_unknown_name_lists_the_supported_ones():
    with pytest.raises(ValueError) as error:
        make_cache("paged", _model(), 1, 16)
    assert str(error.value) == ("unknown cache_implementation 'paged'; supported: dynamic, offloaded, quantized, "
                                "sink, sliding_window, static")
    assert set(CACHE_ALIASES.values()) <= set(CACHE_KINDS)


def test_options_are_copied_not_kept():
    options = {"window_length": 10, "num_sink_tokens": 2}
    make_cache("sink", _model(), 1, 16, options)
    assert options == {"window_length": 10, "num_sink_tokens": 2}
