"""tokenmill: LLM inference in native PyTorch, transformers-compatible, served like TGI and vLLM.

Public names are resolved lazily so `import tokenmill` stays cheap and submodules load only when used.
"""

from __future__ import annotations

import importlib

from .version import __version__

_EXPORTS = {
    "AutoConfig": "auto", "AutoModelForCausalLM": "auto", "AutoTokenizer": "auto",
    "BitsAndBytesConfig": "assembly.quantization_config",
    "save_gguf": "assembly.export_gguf",
    "Cache": "cache", "DynamicCache": "cache", "StaticCache": "cache", "SlidingWindowCache": "cache",
    "SinkCache": "cache", "QuantizedCache": "cache", "OffloadedCache": "cache", "ModelConfig": "config",
    "GenerationConfig": "generation.config",
    "LogitsProcessor": "generation.logits_process", "LogitsProcessorList": "generation.logits_process",
    "StoppingCriteria": "generation.stopping_criteria", "StoppingCriteriaList": "generation.stopping_criteria",
    "TextStreamer": "generation.streamers", "TextIteratorStreamer": "generation.streamers",
    "set_seed": "generation.utils", "Tokenizer": "tokenizer",
    "LLM": "engine", "SamplingParams": "engine", "pipeline": "pipelines",
    "TokenmillError": "errors", "CheckpointError": "errors", "ChatTemplateError": "errors",
    "UnsupportedArchitectureError": "errors", "UnsupportedQuantTypeError": "errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module_name = _EXPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module 'tokenmill' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module_name}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
