"""The serving engine: paged KV cache, continuous batching, per-request sampling."""

from .adapters import LoRARequest
from .engine import EngineConfig, LLMEngine
from .llm import LLM
from .outputs import CompletionOutput, RequestOutput
from .sampling_params import SamplingParams

__all__ = ["LLM", "SamplingParams", "LLMEngine", "EngineConfig", "RequestOutput", "CompletionOutput", "LoRARequest"]
