"""cache_implementation name → a Cache object for a model and a generation."""

from __future__ import annotations

from .base import Cache
from .dynamic import DynamicCache

CACHE_KINDS = {"dynamic": lambda model, batch_size, max_cache_len: DynamicCache()}


def make_cache(kind: str | None, model, batch_size: int, max_cache_len: int) -> Cache:
    builder = CACHE_KINDS.get(kind or "dynamic")
    if builder is None:
        raise ValueError(
            f"unknown cache_implementation {kind!r}; supported: {', '.join(sorted(CACHE_KINDS))}"
        )
    return builder(model, batch_size, max_cache_len)
