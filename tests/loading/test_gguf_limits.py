"""Absurd sizes in a GGUF's metadata are refused, naming the file and the GGUF key, before a model is laid out:
no hang (block_count 10^6), no MemoryError (2^32 - 1 layers), no ZeroDivisionError (0 heads)."""

from __future__ import annotations

import pytest
from gguf import GGUFValueType

from tokenmill import AutoModelForCausalLM, AutoTokenizer
from tokenmill.errors import CheckpointError
from tokenmill.loading.gguf import GGUFCheckpoint
from tokenmill.models.registry import gguf_architectures

from tiny_gguf import FFN, HIDDEN, VOCAB, write_tiny_llama

U32, U64, I32, F32, STR, ARR = (GGUFValueType.UINT32, GGUFValueType.UINT64, GGUFValueType.INT32,
                                GGUFValueType.FLOAT32, GGUFValueType.STRING, GGUFValueType.ARRAY)


def load_refused(tmp_path, metadata: dict, match: str, tensors: dict | None = None) -> str:
    path = write_tiny_llama(tmp_path / "bad.gguf", metadata, tensors=tensors)
    with pytest.raises(CheckpointError, match=match) as error:
        AutoModelForCausalLM.from_pretrained(path, progress=False)
    assert str(error.value).startswith(f"{path}: ")
    return str(error.value)


@pytest.mark.parametrize("key, value, kind, match", [
    ("llama.block_count", 10 ** 6, U32, r"llama.block_count = 1000000: out of range \(allowed 1..1024\)"),
    ("llama.block_count", 2 ** 32 - 1, U32, "llama.block_count = 4294967295: out of range"),
    ("llama.block_count", 0, U32, "llama.block_count = 0: out of range"),
    ("llama.attention.head_count", 0, U32, "llama.attention.head_count = 0: out of range"),
    ("llama.attention.head_count_kv", 0, U32, "llama.attention.head_count_kv = 0: out of range"),
    ("llama.attention.head_count_kv", 3, U32, "llama.attention.head_count = 4 is not a multiple of "
                                              "llama.attention.head_count_kv = 3"),
    ("llama.embedding_length", 2 ** 40, U64, "llama.embedding_length = 1099511627776: out of range"),
    ("llama.feed_forward_length", 2 ** 40, U64, "llama.feed_forward_length = 1099511627776: out of range"),
    ("llama.vocab_size", -1, I32, "llama.vocab_size = -1: out of range"),
    ("llama.vocab_size", 2 ** 31, U64, "llama.vocab_size = 2147483648: out of range"),
    ("llama.context_length", 2 ** 40, U64, "llama.context_length = 1099511627776: out of range"),
    ("llama.attention.key_length", 2 ** 20, U32, "llama.attention.key_length = 1048576: out of range"),
    ("llama.block_count", "2", STR, "llama.block_count = '2': must be a whole number"),
    ("llama.block_count", 2.0, F32, "llama.block_count = 2.0: must be a whole number"),
    ("llama.rope.freq_base", float("nan"), F32, "llama.rope.freq_base = nan: must be a finite number"),
    ("llama.rope.freq_base", -1.0, F32, "llama.rope.freq_base = -1.0: must be a finite number"),
    ("llama.attention.layer_norm_rms_epsilon", float("inf"), F32, "layer_norm_rms_epsilon = inf"),
    ("llama.rope.scaling.factor", 1e30, F32, "llama.rope.scaling.factor = .*must be a finite number"),
])
def test_absurd_sizes_are_refused_naming_the_key(tmp_path, key, value, kind, match):
    load_refused(tmp_path, {key: (value, kind, None)}, match)


def test_zero_rope_base_is_refused_by_the_derived_config(tmp_path):
    load_refused(tmp_path, {"llama.rope.freq_base": (0.0, F32, None)}, r"llama.rope.freq_base = 0.0: out of range")


def test_per_layer_lists_are_checked_item_by_item_and_by_length(tmp_path):
    load_refused(tmp_path, {"llama.attention.head_count_kv": ([2, 0], ARR, I32)},
                 "llama.attention.head_count_kv = 0: out of range")
    load_refused(tmp_path, {"llama.feed_forward_length": ([FFN] * 3, ARR, I32)},
                 "llama.feed_forward_length: a per-layer list of 3 values for 2 layers")


def test_missing_sizes_are_named(tmp_path):
    path = write_tiny_llama(tmp_path / "bad.gguf", drop=("llama.feed_forward_length",))
    with pytest.raises(CheckpointError, match="bad.gguf: llama.feed_forward_length is missing"):
        AutoModelForCausalLM.from_pretrained(path, progress=False)
    path = write_tiny_llama(tmp_path / "bad.gguf", drop=("llama.block_count",))
    with pytest.raises(CheckpointError, match="bad.gguf: cannot derive a llama config from the metadata"):
        AutoModelForCausalLM.from_pretrained(path, progress=False)


def test_block_count_against_the_tensors(tmp_path):
    load_refused(tmp_path, {"llama.block_count": (3, U32, None)},
                 r"llama.block_count = 3 but the weights hold layers 0..1")
    load_refused(tmp_path, {"llama.block_count": (1, U32, None)},
                 r"llama.block_count = 1 but the weights hold layers 0..1")


def test_embedding_length_against_the_tensors(tmp_path):
    # 64 wide with 8 heads keeps the head arithmetic whole: only the embedding's shape gives it away
    load_refused(tmp_path, {"llama.embedding_length": (2 * HIDDEN, U32, None)},
                 rf"llama.embedding_length = 64 but tensor 'token_embd.weight' has shape \({VOCAB}, {HIDDEN}\)")


def test_a_config_function_failure_names_the_file(tmp_path):
    """A value the checks let through but the family's arithmetic trips on still names the file."""
    path = write_tiny_llama(tmp_path / "odd.gguf", {"llama.expert_count": (4, U32, None)})
    with pytest.raises(CheckpointError, match=r"odd.gguf: cannot derive a llama config from the metadata"):
        GGUFCheckpoint(path, gguf_architectures()).config_dict()


@pytest.mark.parametrize("metadata, match", [
    ({"tokenizer.ggml.scores": ([0.0] * 3, ARR, F32)}, f"tokenizer.ggml.scores: 3 entries for {VOCAB} tokens"),
    ({"tokenizer.ggml.token_type": ([1] * (VOCAB + 1), ARR, I32)}, "tokenizer.ggml.token_type: 41 entries"),
    ({"tokenizer.ggml.tokens": (list(range(VOCAB)), ARR, I32)}, "tokenizer.ggml.tokens must be an array of strings"),
    ({"tokenizer.ggml.scores": (["a"] * VOCAB, ARR, STR)}, "tokenizer.ggml.scores must be an array of numbers"),
    ({"tokenizer.ggml.bos_token_id": (VOCAB, U32, None)}, f"tokenizer.ggml.bos_token_id = {VOCAB}: not a token id"),
    ({"tokenizer.ggml.eos_token_id": (-1, I32, None)}, "tokenizer.ggml.eos_token_id = -1: not a token id"),
    ({"tokenizer.ggml.merges": ([1, 2], ARR, I32)}, "tokenizer.ggml.merges must be an array of strings"),
])
def test_tokenizer_arrays_are_checked(tmp_path, metadata, match):
    path = write_tiny_llama(tmp_path / "bad.gguf", metadata)
    with pytest.raises(CheckpointError, match=match) as error:
        AutoTokenizer.from_pretrained(path)
    assert str(error.value).startswith(f"{path}: ")


def test_sane_values_beyond_the_tiny_ones_still_load(tmp_path):
    """A long context, a large rope base and a per-layer list of the right length are all fine."""
    path = write_tiny_llama(tmp_path / "ok.gguf", {
        "llama.context_length": (10 * 2 ** 20, U32, None), "llama.rope.freq_base": (5e5, F32, None),
        "llama.feed_forward_length": ([FFN, FFN], ARR, I32)})
    model = AutoModelForCausalLM.from_pretrained(path, progress=False)
    assert model.config.max_position_embeddings == 10 * 2 ** 20 and model.config.intermediate_size == FFN


def test_tokens_too_long_to_derive_merges_from(tmp_path):
    """Merges of a SentencePiece vocabulary are derived by cutting every token everywhere: squared length."""
    tokens = [f"t{index}" for index in range(VOCAB - 3)] + ["a" * 30_000] * 3
    path = write_tiny_llama(tmp_path / "long.gguf", {"tokenizer.ggml.tokens": (tokens, ARR, STR)})
    with pytest.raises(CheckpointError, match=r"long.gguf: tokenizer.ggml.tokens: tokens too long to derive merges "
                                              r"from \(the longest has 30000 characters"):
        AutoTokenizer.from_pretrained(path)
