"""Exceptions raised by tokenmill: each names the file or value at fault and why."""


class TokenmillError(Exception):
    """Base class of every error tokenmill raises on purpose."""


class CheckpointError(TokenmillError, ValueError):
    """A checkpoint file is missing, truncated, corrupt or inconsistent."""

    def __init__(self, path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """The source names no local file or folder and is not in the Hugging Face cache (an OSError, as in transformers)."""


class UnsupportedArchitectureError(TokenmillError, ValueError):
    """The checkpoint's architecture (model_type or GGUF general.architecture) is not implemented."""

    def __init__(self, name: str, supported):
        self.name = name
        self.supported = sorted(supported)
        super().__init__(
            f"unsupported architecture {name!r}; tokenmill supports: {', '.join(self.supported)}"
        )


class UnsupportedQuantTypeError(CheckpointError):
    """A GGUF tensor uses a quantization type tokenmill cannot dequantize."""


class PickleCheckpointError(CheckpointError):
    """A pickle checkpoint (.bin/.pt) was found but the caller did not opt in to loading it."""


class ChatTemplateError(TokenmillError, ValueError):
    """A chat template failed to render, raised on purpose, or tried to leave the sandbox."""


class NonFiniteLogitsError(TokenmillError, FloatingPointError):
    """A model produced NaN or infinite logits during generation; the message names where they first appear."""
