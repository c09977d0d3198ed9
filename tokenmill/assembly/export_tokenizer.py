"""A tokenizer → a GGUF file's `tokenizer.ggml.*` keys: the inverse of loading/gguf_tokenizer.py for byte-level
BPE vocabularies (llama.cpp's "gpt2" model): tokens by id, merges, token types, the pre-tokenizer's llama.cpp
name, special ids, whether BOS is added, and the chat template."""

from __future__ import annotations

import json

from tokenizers import Tokenizer as Backend
from tokenizers import models

from ..loading.gguf_tokenizer import (DIGIT_SPLIT_PRE, SPLIT_BY_PRE, TOKEN_CONTROL, TOKEN_NORMAL, TOKEN_UNUSED,
                                      TOKEN_USER_DEFINED, byte_level_pre_tokenizer)

DEFAULT_PRE = "default"  # llama.cpp's name for GPT-2's own split


class TokenizerExportError(ValueError):
    """A tokenizer the GGUF export cannot write, saying which kinds it can."""


def _backend_json(backend) -> dict:
    return json.loads(backend.to_str())


def pre_tokenizer_name(backend) -> str | None:
    """The llama.cpp `tokenizer.ggml.pre` whose split the reader rebuilds exactly as `backend`'s, or None."""
    wanted = _backend_json(backend).get("pre_tokenizer")
    for name in (*SPLIT_BY_PRE, *sorted(DIGIT_SPLIT_PRE), DEFAULT_PRE):
        candidate = Backend(models.BPE())
        candidate.pre_tokenizer = byte_level_pre_tokenizer(name)
        if _backend_json(candidate).get("pre_tokenizer") == wanted:
            return name
    return None


def _merges(model: dict) -> list[str]:
    return [merge if isinstance(merge, str) else " ".join(merge) for merge in model.get("merges", [])]


def vocabulary(backend, vocab_size: int) -> tuple[list[str], list[int]]:
    """Tokens and their llama.cpp types for ids 0 .. vocab_size - 1 (ids without a token: unused fillers)."""
    by_id = {index: token for token, index in backend.get_vocab(with_added_tokens=True).items()}
    added = backend.get_added_tokens_decoder()
    tokens, types = [], []
    for index in range(vocab_size):
        if index not in by_id:
            tokens.append(f"[PAD{index}]")
            types.append(TOKEN_UNUSED)
            continue
        tokens.append(by_id[index])
        extra = added.get(index)
        types.append(TOKEN_NORMAL if extra is None else TOKEN_CONTROL if extra.special else TOKEN_USER_DEFINED)
    return tokens, types


def _adds_bos(tokenizer) -> bool:
    bos = getattr(tokenizer, "bos_token_id", None)
    ids = tokenizer.backend_tokenizer.encode("a", add_special_tokens=True).ids
    return bos is not None and bool(ids) and ids[0] == bos


def add_tokenizer(writer, tokenizer, vocab_size: int, gguf) -> None:
    """Write `tokenizer` (a tokenmill Tokenizer) into `writer`'s metadata."""
    backend = tokenizer.backend_tokenizer
    model = _backend_json(backend)["model"]
    if model.get("type") != "BPE" or model.get("byte_fallback"):
        raise TokenizerExportError(f"GGUF export writes byte-level BPE tokenizers only, not a "
                                   f"{model.get('type')} model{' with byte fallback' if model.get('byte_fallback') else ''}")
    pre = pre_tokenizer_name(backend)
    if pre is None:
        raise TokenizerExportError("the tokenizer's pre-tokenizer matches no split llama.cpp names "
                                   f"({', '.join([*SPLIT_BY_PRE, *sorted(DIGIT_SPLIT_PRE), DEFAULT_PRE])})")
    tokens, types = vocabulary(backend, max(vocab_size, backend.get_vocab_size(with_added_tokens=True)))
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(_merges(model))
    for key, add in (("bos_token_id", writer.add_bos_token_id), ("eos_token_id", writer.add_eos_token_id),
                     ("pad_token_id", writer.add_pad_token_id), ("unk_token_id", writer.add_unk_token_id)):
        value = getattr(tokenizer, key, None)
        if value is not None:
            add(int(value))
    writer.add_add_bos_token(_adds_bos(tokenizer))
    template = tokenizer.chat_template
    if isinstance(template, str):
        writer.add_chat_template(template)
    elif isinstance(template, dict):
        writer.add_chat_template([{"name": name, "template": text} for name, text in template.items()])
