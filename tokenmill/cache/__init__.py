from .base import Cache, LayerCache
from .dynamic import DynamicCache, DynamicLayer

__all__ = ["Cache", "LayerCache", "DynamicCache", "DynamicLayer"]
