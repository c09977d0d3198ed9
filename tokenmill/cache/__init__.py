from .base import Cache, LayerCache
from .dynamic import DynamicCache, DynamicLayer
from .offloaded import OffloadedCache, OffloadedLayer
from .quantized import QuantizedCache, QuantizedLayer
from .sliding import SinkCache, SlidingWindowCache, WindowLayer
from .static import StaticCache, StaticLayer

__all__ = ["Cache", "LayerCache", "DynamicCache", "DynamicLayer", "StaticCache", "StaticLayer",
           "SlidingWindowCache", "SinkCache", "WindowLayer", "QuantizedCache", "QuantizedLayer",
           "OffloadedCache", "OffloadedLayer"]
