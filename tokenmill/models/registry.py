"""model_type → architecture class; the one place that knows which families exist."""

from __future__ import annotations

import importlib

from ..errors import UnsupportedArchitectureError

# model_type: (module under tokenmill.models, class name)
ARCHITECTURES: dict[str, tuple[str, str]] = {
    "llama": ("llama", "LlamaForCausalLM"),
    "mistral": ("mistral", "MistralForCausalLM"),
    "qwen2": ("qwen2", "Qwen2ForCausalLM"),
    "qwen3": ("qwen3", "Qwen3ForCausalLM"),
    "qwen2_moe": ("qwen2_moe", "Qwen2MoeForCausalLM"),
    "mixtral": ("mixtral", "MixtralForCausalLM"),
    "gemma": ("gemma", "GemmaForCausalLM"),
    "gemma2": ("gemma2", "Gemma2ForCausalLM"),
    "gemma3_text": ("gemma3", "Gemma3ForCausalLM"),
    "phi3": ("phi3", "Phi3ForCausalLM"),
    "gpt2": ("gpt2", "GPT2LMHeadModel"),
}


def supported_model_types() -> list[str]:
    return sorted(ARCHITECTURES)


def model_class(model_type: str):
    try:
        module_name, class_name = ARCHITECTURES[model_type]
    except KeyError:
        raise UnsupportedArchitectureError(model_type, ARCHITECTURES) from None
    module = importlib.import_module(f"{__package__}.{module_name}")
    return getattr(module, class_name)
