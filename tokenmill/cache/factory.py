"""cache_implementation name → a Cache object for a model and a generation.

Builders receive (model, batch_size, max_cache_len, options) where `options` is the generation config's
`cache_config` dict (window sizes, quantization bits…), as transformers reads it.
"""

from __future__ import annotations

from .base import Cache
from .dynamic import DynamicCache
from .offloaded import OffloadedCache
from .quantized import QuantizedCache
from .sliding import SinkCache, SlidingWindowCache
from .static import StaticCache


def _model_dtype(model):
    return getattr(model, "dtype", None)


def _sliding(model, batch_size, max_cache_len, options):
    window = options.get("sliding_window", getattr(model.config, "sliding_window", None))
    if window is None:
        raise ValueError("cache_implementation='sliding_window' needs a window: the model config has no "
                         "sliding_window, so pass cache_config={'sliding_window': N}")
    return SlidingWindowCache(sliding_window=window)


def _sink(model, batch_size, max_cache_len, options):
    return SinkCache(window_length=options.get("window_length", 256),
                     num_sink_tokens=options.get("num_sink_tokens", 4))


def _quantized(model, batch_size, max_cache_len, options):
    return QuantizedCache(nbits=options.get("nbits", 8), residual_length=options.get("residual_length", 32),
                          q_group_size=options.get("q_group_size"))


def _static(model, batch_size, max_cache_len, options):
    length = options.get("max_cache_len") or max_cache_len
    return StaticCache(max_cache_len=length, batch_size=batch_size, dtype=_model_dtype(model))


CACHE_KINDS = {
    "dynamic": lambda model, batch_size, max_cache_len, options: DynamicCache(),
    "static": _static,
    "sliding_window": _sliding,
    "sink": _sink,
    "quantized": _quantized,
    "offloaded": lambda model, batch_size, max_cache_len, options: OffloadedCache(),
}
# transformers' other spellings of the same kinds
CACHE_ALIASES = {"offloaded_static": "static", "hybrid": "static", "sliding": "sliding_window",
                 "offload": "offloaded"}


def make_cache(kind: str | None, model, batch_size: int, max_cache_len: int, options: dict | None = None) -> Cache:
    name = CACHE_ALIASES.get(kind, kind) or "dynamic"
    builder = CACHE_KINDS.get(name)
    if builder is None:
        raise ValueError(
            f"unknown cache_implementation {kind!r}; supported: {', '.join(sorted(CACHE_KINDS))}"
        )
    return builder(model, batch_size, max_cache_len, dict(options or {}))
