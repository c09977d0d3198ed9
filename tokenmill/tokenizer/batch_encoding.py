"""`BatchEncoding`: what a tokenizer call returns, a dict with attribute access, tensors and `.to(device)`."""

from __future__ import annotations

from collections import UserDict
from typing import Any

import torch

TENSOR_TYPES = ("pt", "np")


def to_python(value: Any) -> Any:
    """Tensors and arrays (at any nesting) as plain Python lists and numbers."""
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if type(value).__module__ == "numpy" and hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return [to_python(item) for item in value]
    return value


def _as_tensor(value: Any, tensor_type: str):
    if isinstance(value, torch.Tensor):
        return value if tensor_type == "pt" else value.numpy()
    if tensor_type == "pt":
        return torch.tensor(value, dtype=torch.int64 if _is_empty(value) else None)
    import numpy

    return numpy.asarray(value, dtype=numpy.int64 if _is_empty(value) else None)


def _is_empty(value: Any) -> bool:
    if isinstance(value, (list, tuple)):
        return all(_is_empty(item) for item in value)
    return False


class BatchEncoding(UserDict):
    """input_ids / attention_mask / ... as lists or tensors; integer indexing gives the `tokenizers.Encoding`."""

    def __init__(self, data: dict | None = None, encodings=None, tensor_type: str | None = None):
        super().__init__(data)
        self._encodings = encodings
        self.convert_to_tensors(tensor_type)

    def __getitem__(self, item):
        if isinstance(item, str):
            return self.data[item]
        if self._encodings is not None:
            return self._encodings[item]
        if isinstance(item, slice):
            return {key: value[item] for key, value in self.data.items()}
        raise KeyError(f"BatchEncoding keys are field names, or integers/slices over the batch; got {item!r}")

    def __getattr__(self, name: str):
        if name.startswith("__") or name in ("data", "_encodings"):
            raise AttributeError(name)
        try:
            return self.data[name]
        except KeyError:
            raise AttributeError(f"BatchEncoding has no field {name!r}") from None

    def __getstate__(self):
        return {"data": self.data, "encodings": self._encodings}

    def __setstate__(self, state):
        self.data = state.get("data", {})
        self._encodings = state.get("encodings")

    @property
    def encodings(self):
        """The `tokenizers.Encoding` of each row (None when the values were built without the backend)."""
        return self._encodings

    @property
    def is_fast(self) -> bool:
        return self._encodings is not None

    @property
    def n_sequences(self) -> int | None:
        return self._encodings[0].n_sequences if self._encodings else None

    def tokens(self, batch_index: int = 0) -> list[str]:
        return self._require_encodings()[batch_index].tokens

    def word_ids(self, batch_index: int = 0) -> list[int | None]:
        return self._require_encodings()[batch_index].word_ids

    def sequence_ids(self, batch_index: int = 0) -> list[int | None]:
        return self._require_encodings()[batch_index].sequence_ids

    def char_to_token(self, batch_or_char_index: int, char_index: int | None = None, sequence_index: int = 0):
        """Index of the token covering a character (of row `batch_or_char_index`, or of row 0)."""
        batch_index, char_index = (0, batch_or_char_index) if char_index is None else (batch_or_char_index, char_index)
        return self._require_encodings()[batch_index].char_to_token(char_index, sequence_index)

    def token_to_chars(self, batch_or_token_index: int, token_index: int | None = None):
        batch_index, token_index = (
            (0, batch_or_token_index) if token_index is None else (batch_or_token_index, token_index)
        )
        return self._require_encodings()[batch_index].token_to_chars(token_index)

    def _require_encodings(self):
        if self._encodings is None:
            raise ValueError("this BatchEncoding was not produced by the tokenizer backend; it has no encodings")
        return self._encodings

    def convert_to_tensors(self, tensor_type: str | None = None) -> "BatchEncoding":
        """Turn every field into a `torch.Tensor` ("pt") or numpy array ("np"), in place."""
        if tensor_type is None:
            return self
        tensor_type = getattr(tensor_type, "value", tensor_type)
        if tensor_type not in TENSOR_TYPES:
            raise ValueError(f"return_tensors must be one of {TENSOR_TYPES} or None, got {tensor_type!r}")
        for key, value in self.data.items():
            try:
                self.data[key] = _as_tensor(value, tensor_type)
            except (ValueError, TypeError) as error:
                raise ValueError(
                    f"cannot make a tensor of `{key}`: its rows have different lengths; pass padding=True "
                    "(and truncation=True) to get rectangular batches"
                ) from error
        return self

    def to(self, device, *, non_blocking: bool = False) -> "BatchEncoding":
        """Move every tensor field to `device` (a str, `torch.device` or index); other values stay as they are."""
        if not isinstance(device, (str, int, torch.device)):
            raise TypeError(f"BatchEncoding.to() takes a device, got {device!r} (dtype casts are not supported)")
        self.data = {
            key: value.to(device=device, non_blocking=non_blocking) if isinstance(value, torch.Tensor) else value
            for key, value in self.data.items()
        }
        return self
