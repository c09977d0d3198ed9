"""A tokenizer → a GGUF file's `tokenizer.ggml.*` keys: the inverse of loading/gguf_tokenizer.py.

Two kinds, as the reader's:
- byte-level BPE (llama.cpp's "gpt2" model): tokens by id, merges, token types, the pre-tokenizer's llama.cpp
  name;
- SentencePiece BPE with byte fallback (llama.cpp's "llama" model, Llama 2 / Gemma): tokens by id, scores and
  token types, no merges (readers derive them from the scores, or for Gemma from the token order). A token's
  score is minus the rank of the first merge that makes it, so merging by highest score is merging in the
  tokenizer's own merge order; tokens no merge makes take the lowest score. `<0xNN>` tokens are BYTE, and
  `add_space_prefix` says whether a leading "▁" is added to the text. Gemma files spell runs of spaces with
  real spaces (llama.cpp matches them whole, as user-defined tokens): those are written so.
Then special ids, whether BOS / EOS are added, and the chat template. Before anything is written the keys are
read back by loading/gguf_tokenizer.py and must encode a probe text to the same ids as the tokenizer itself,
else TokenizerExportError: a file never carries a tokenizer that differs from its source.
"""

from __future__ import annotations

import json
import re

from tokenizers import Tokenizer as Backend
from tokenizers import models

from ..loading.gguf_tokenizer import (DIGIT_SPLIT_PRE, SPIECE_SPACE, SPLIT_BY_PRE, TOKEN_BYTE, TOKEN_CONTROL,
                                      TOKEN_NORMAL, TOKEN_UNUSED, TOKEN_USER_DEFINED, build_tokenizer,
                                      byte_level_pre_tokenizer)

DEFAULT_PRE = "default"  # llama.cpp's name for GPT-2's own split
BYTE_TOKEN = re.compile(r"^<0x[0-9A-F]{2}>$")
SPECIAL_SCORE = -1000.0  # llama.cpp's converter's score for control and user-defined tokens
PROBE = ("Hello world! It's 2026-12-06, 3.14159 and 42 apples.\n\n  Indented  code:\tdef f(x): return x**2\n"
         "Ünïcödé: naïve café, 日本語のテキスト, emoji 🙂🚀, Ελληνικά.    Trailing spaces   ")
# metadata key → the GGUFWriter method that writes it
WRITERS = {
    "tokenizer.ggml.model": "add_tokenizer_model", "tokenizer.ggml.pre": "add_tokenizer_pre",
    "tokenizer.ggml.tokens": "add_token_list", "tokenizer.ggml.token_type": "add_token_types",
    "tokenizer.ggml.scores": "add_token_scores", "tokenizer.ggml.merges": "add_token_merges",
    "tokenizer.ggml.bos_token_id": "add_bos_token_id", "tokenizer.ggml.eos_token_id": "add_eos_token_id",
    "tokenizer.ggml.padding_token_id": "add_pad_token_id", "tokenizer.ggml.unknown_token_id": "add_unk_token_id",
    "tokenizer.ggml.add_bos_token": "add_add_bos_token", "tokenizer.ggml.add_eos_token": "add_add_eos_token",
    "tokenizer.ggml.add_space_prefix": "add_add_space_prefix",
}


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


def _first_ids(backend, text: str) -> list[int]:
    return backend.encode(text, add_special_tokens=True).ids


def _adds_bos(tokenizer) -> bool:
    bos = getattr(tokenizer, "bos_token_id", None)
    ids = _first_ids(tokenizer.backend_tokenizer, "a")
    return bos is not None and bool(ids) and ids[0] == bos


def _adds_eos(tokenizer) -> bool:
    eos = getattr(tokenizer, "eos_token_id", None)
    ids = _first_ids(tokenizer.backend_tokenizer, "a")
    return eos is not None and bool(ids) and ids[-1] == eos


def _byte_level_keys(backend, model: dict, size: int) -> dict:
    pre = pre_tokenizer_name(backend)
    if pre is None:
        raise TokenizerExportError("the tokenizer's pre-tokenizer matches no split llama.cpp names "
                                   f"({', '.join([*SPLIT_BY_PRE, *sorted(DIGIT_SPLIT_PRE), DEFAULT_PRE])})")
    tokens, types = vocabulary(backend, size)
    return {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": pre, "tokenizer.ggml.tokens": tokens,
            "tokenizer.ggml.token_type": types, "tokenizer.ggml.merges": _merges(model)}


def merge_scores(tokens: list[str], types: list[int], merges: list[str]) -> list[float]:
    """Minus the rank of the first merge making each token; the lowest score for tokens no merge makes (0 for
    bytes, SPECIAL_SCORE for control and user-defined tokens, as llama.cpp's converter writes them)."""
    rank: dict[str, int] = {}
    for index, merge in enumerate(merges):
        left, _, right = merge.partition(" ")
        rank.setdefault(left + right, index)
    lowest = -float(len(merges) + 1)
    scores = []
    for token, kind in zip(tokens, types):
        if kind == TOKEN_BYTE:
            scores.append(0.0)
        elif kind in (TOKEN_CONTROL, TOKEN_USER_DEFINED, TOKEN_UNUSED):
            scores.append(SPECIAL_SCORE)
        else:
            scores.append(-float(rank[token]) if token in rank else lowest)
    return scores


def _sentencepiece_keys(backend, model: dict, size: int, gemma: bool) -> dict:
    tokens, types = vocabulary(backend, size)
    for index, token in enumerate(tokens):
        if types[index] == TOKEN_NORMAL and BYTE_TOKEN.match(token):
            types[index] = TOKEN_BYTE
        elif gemma and types[index] == TOKEN_NORMAL and len(token) > 1 and not token.strip(SPIECE_SPACE):
            tokens[index], types[index] = " " * len(token), TOKEN_USER_DEFINED  # the file's spelling of a run
    encoded = backend.encode("a", add_special_tokens=False)
    space_prefix = bool(encoded.tokens) and encoded.tokens[0].startswith(SPIECE_SPACE)
    return {"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": tokens,
            "tokenizer.ggml.scores": merge_scores(tokens, types, _merges(model)),
            "tokenizer.ggml.token_type": types, "tokenizer.ggml.add_space_prefix": space_prefix}


def tokenizer_keys(tokenizer, vocab_size: int, architecture: str) -> dict:
    """The `tokenizer.ggml.*` keys for `tokenizer` (a tokenmill Tokenizer) in a file of `architecture`,
    checked by reading them back."""
    backend = tokenizer.backend_tokenizer
    model = _backend_json(backend)["model"]
    size = max(vocab_size, backend.get_vocab_size(with_added_tokens=True))
    if model.get("type") != "BPE":
        raise TokenizerExportError(f"GGUF export writes BPE tokenizers (byte-level, or SentencePiece's with byte "
                                   f"fallback), not a {model.get('type')} model")
    if model.get("byte_fallback"):
        keys = _sentencepiece_keys(backend, model, size, architecture.startswith("gemma"))
    else:
        keys = _byte_level_keys(backend, model, size)
    for key in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id"):
        value = getattr(tokenizer, key, None)
        if value is not None:
            name = {"pad_token_id": "padding_token_id", "unk_token_id": "unknown_token_id"}.get(key, key)
            keys[f"tokenizer.ggml.{name}"] = int(value)
    keys["tokenizer.ggml.add_bos_token"] = _adds_bos(tokenizer)
    keys["tokenizer.ggml.add_eos_token"] = _adds_eos(tokenizer)
    _check_read_back(tokenizer, keys, architecture)
    return keys


def _check_read_back(tokenizer, keys: dict, architecture: str) -> None:
    """The reader's tokenizer from `keys` must give the tokenizer's own ids on PROBE (and its EOS text)."""
    rebuilt = build_tokenizer({**keys, "general.architecture": architecture})
    text = PROBE + (tokenizer.eos_token or "") if isinstance(getattr(tokenizer, "eos_token", None), str) else PROBE
    theirs, ours = _first_ids(rebuilt, text), _first_ids(tokenizer.backend_tokenizer, text)
    if theirs != ours:
        first = next((i for i, (a, b) in enumerate(zip(theirs, ours)) if a != b), min(len(theirs), len(ours)))
        raise TokenizerExportError(f"this tokenizer cannot be written as llama.cpp's "
                                   f"{keys['tokenizer.ggml.model']!r} model: read back, it encodes a probe text "
                                   f"differently from token {first} on")


def add_tokenizer(writer, tokenizer, vocab_size: int, architecture: str) -> None:
    """Write `tokenizer` (a tokenmill Tokenizer) into `writer`'s metadata."""
    for key, value in tokenizer_keys(tokenizer, vocab_size, architecture).items():
        getattr(writer, WRITERS[key])(value)
    template = tokenizer.chat_template
    if isinstance(template, str):
        writer.add_chat_template(template)
    elif isinstance(template, dict):
        writer.add_chat_template([{"name": name, "template": text} for name, text in template.items()])
