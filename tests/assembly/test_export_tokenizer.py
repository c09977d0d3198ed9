"""SentencePiece tokenizers → `tokenizer.ggml.*` keys: a Llama-style vocabulary (space prefix, byte fallback)
and the real Gemma 3 one read back to the same ids; Gemma's keys equal llama.cpp's own file's; tokenizers
the keys cannot reproduce are refused."""

from __future__ import annotations

import gguf
import pytest
from tokenizers import Tokenizer as Backend
from tokenizers import models, pre_tokenizers

from tokenmill.assembly.export_tokenizer import PROBE, TokenizerExportError, merge_scores, tokenizer_keys
from tokenmill.loading.gguf_tokenizer import (TOKEN_BYTE, TOKEN_CONTROL, TOKEN_NORMAL, TOKEN_UNKNOWN,
                                              build_tokenizer, tokenizer_config)
from tokenmill.tokenizer import Tokenizer

TEXTS = (PROBE, "Hello hello, the theme: then there.", " leading space", "bytes: ☃ ∑ 🙂", "")
PIECES = ("▁t", "he", "▁the", "▁a", "in", "▁in", "ll", "llo", "▁He", "▁Hello", "er", "▁th", "▁there", "me",
          "▁them", "▁theme", "en", "▁then", "▁hello", "ing")


def llama_style_metadata() -> dict:
    """A small SentencePiece-BPE vocabulary as a Llama 2 GGUF holds it: specials, the 256 byte tokens, merged
    pieces (scores: earlier is likelier) and the single characters of the texts."""
    characters = sorted({c for text in TEXTS for c in text.replace(" ", "▁") if ord(c) < 0x2000} | {"▁"})
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + list(PIECES)
    tokens += [c for c in characters if c not in tokens]
    types = [TOKEN_UNKNOWN, TOKEN_CONTROL, TOKEN_CONTROL] + [TOKEN_BYTE] * 256 + [TOKEN_NORMAL] * (len(tokens) - 259)
    scores = [0.0] * 259 + [-float(i) for i in range(len(tokens) - 259)]
    return {"general.architecture": "llama", "tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": tokens,
            "tokenizer.ggml.scores": scores, "tokenizer.ggml.token_type": types,
            "tokenizer.ggml.bos_token_id": 1, "tokenizer.ggml.eos_token_id": 2, "tokenizer.ggml.unknown_token_id": 0,
            "tokenizer.ggml.add_bos_token": True, "tokenizer.ggml.add_space_prefix": True}


def test_llama_style_vocabulary_reads_back_to_the_same_ids():
    metadata = llama_style_metadata()
    source = Tokenizer(build_tokenizer(metadata), tokenizer_config(metadata))
    keys = tokenizer_keys(source, len(metadata["tokenizer.ggml.tokens"]), "llama")
    assert keys["tokenizer.ggml.model"] == "llama" and "tokenizer.ggml.merges" not in keys
    assert keys["tokenizer.ggml.tokens"] == metadata["tokenizer.ggml.tokens"]
    types = keys["tokenizer.ggml.token_type"]
    assert types[3:259] == [TOKEN_BYTE] * 256 and types[1:3] == [TOKEN_CONTROL] * 2
    assert keys["tokenizer.ggml.add_space_prefix"] is True and keys["tokenizer.ggml.add_bos_token"] is True
    assert (keys["tokenizer.ggml.bos_token_id"], keys["tokenizer.ggml.eos_token_id"]) == (1, 2)
    # the pieces a merge makes keep their order of likelihood; a piece with no split into two tokens ("▁He",
    # "▁there") is made by no merge, here or in the source, and takes the lowest score, as single characters
    scores = dict(zip(keys["tokenizer.ggml.tokens"], keys["tokenizer.ggml.scores"]))
    vocab = set(metadata["tokenizer.ggml.tokens"])
    merged = [piece for piece in PIECES
              if any(piece[:cut] in vocab and piece[cut:] in vocab for cut in range(1, len(piece)))]
    assert {"▁He", "▁there"} <= set(PIECES) - set(merged) and len(merged) > 10
    assert all(scores[piece] == scores["e"] for piece in set(PIECES) - set(merged))
    assert sorted(merged, key=scores.__getitem__, reverse=True) == merged
    rebuilt = build_tokenizer({**keys, "general.architecture": "llama"})
    for text in TEXTS:
        ids = source.backend_tokenizer.encode(text).ids
        assert rebuilt.encode(text).ids == ids, text
        assert ids[:1] == [1]
    assert len(source.backend_tokenizer.encode("the theme").ids) < len("the theme")  # merges were applied


def test_merge_scores_follow_the_first_merge_making_each_token():
    tokens = ["<s>", "<0x41>", "a", "b", "c", "ab", "abc", "bc"]
    types = [TOKEN_CONTROL, TOKEN_BYTE] + [TOKEN_NORMAL] * 6
    scores = merge_scores(tokens, types, ["a b", "b c", "ab c", "a bc"])
    assert scores == [-1000.0, 0.0, -5.0, -5.0, -5.0, 0.0, -2.0, -1.0]


def test_merges_the_scores_cannot_express_are_refused():
    """A BPE whose merges leave out a split into two tokens ("e" + "l" never merges although "el" exists):
    a SentencePiece reader merges every such split, so the read-back differs and the export refuses."""
    metadata = llama_style_metadata()
    vocab = {token: index for index, token in enumerate(metadata["tokenizer.ggml.tokens"] + ["el"])}
    backend = Backend(models.BPE(vocab=vocab, merges=[], unk_token="<unk>", byte_fallback=True))
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    with pytest.raises(TokenizerExportError, match="encodes a probe text differently"):
        tokenizer_keys(Tokenizer(backend, {"bos_token": "<s>", "eos_token": "</s>"}), len(vocab), "llama")


def test_other_models_are_refused():
    backend = Backend(models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]"))
    with pytest.raises(TokenizerExportError, match="not a WordLevel model"):
        tokenizer_keys(Tokenizer(backend, {}), 2, "llama")


@pytest.mark.slow
def test_gemma3_keys_equal_llama_cpp_s_file(gemma3_gguf, tmp_path):
    """Through a Hugging Face folder (as `tokenmill convert` writes it): tokens by id (runs of spaces spelled
    with spaces), token types, special ids and flags exactly as llama.cpp's converter wrote them."""
    Tokenizer.from_gguf(gemma3_gguf).save_pretrained(tmp_path)
    keys = tokenizer_keys(Tokenizer.from_pretrained(tmp_path), 262144, "gemma3")
    reader = gguf.GGUFReader(gemma3_gguf)
    for key, value in keys.items():
        if key != "tokenizer.ggml.scores":  # llama.cpp's are SentencePiece's; ours the merge ranks
            assert value == reader.fields[key].contents(), key
    assert keys["tokenizer.ggml.add_space_prefix"] is False
