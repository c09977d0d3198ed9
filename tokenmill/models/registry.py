"""model_type → architecture class; the one place that knows which families exist."""

from __future__ import annotations

import importlib

from ..errors import UnsupportedArchitectureError

# model_type: (module under tokenmill.models, class name)
ARCHITECTURES: dict[str, tuple[str, str]] = {
    "llama": ("llama", "LlamaForCausalLM"),
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
