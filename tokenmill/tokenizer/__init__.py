"""Tokenizer (transformers' fast-tokenizer surface over `tokenizers`) and sandboxed chat templates."""

from .batch_encoding import BatchEncoding
from .tokenizer import Tokenizer

__all__ = ["BatchEncoding", "Tokenizer"]
