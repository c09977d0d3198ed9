"""Hostile GGUF headers: each absurd count, size, nesting or string is refused with a CheckpointError that
names the file and the key or tensor, before anything is allocated for it."""

from __future__ import annotations

import struct

import pytest
import torch

from tokenmill import AutoModelForCausalLM, AutoTokenizer
from tokenmill.errors import CheckpointError
from tokenmill.loading.gguf import GGUFCheckpoint
from tokenmill.loading.gguf_header import MAX_ARRAY_DEPTH

from tiny_gguf import ARCHITECTURE_KV, gguf_string, raw_gguf, raw_kv, raw_tensor_entry, write_tiny_llama

ARRAY, STRING, UINT32 = 9, 8, 4


def refused(tmp_path, data: bytes, match: str) -> CheckpointError:
    """Both public loaders refuse the file with `match` in a message naming it."""
    path = tmp_path / "hostile.gguf"
    path.write_bytes(data)
    for load in (lambda: AutoModelForCausalLM.from_pretrained(path, progress=False),
                 lambda: AutoTokenizer.from_pretrained(path)):
        with pytest.raises(CheckpointError, match=match) as error:
            load()
        assert str(error.value).startswith(f"{path}: ")
    return error.value


def test_tensor_dims_that_wrap_an_int64_product(tmp_path):
    """2^32 x 2^32 elements: a 64-bit product wraps to 0; the exact one is far past the file's end."""
    entry = raw_tensor_entry(b"token_embd.weight", (2 ** 32, 2 ** 32))
    refused(tmp_path, raw_gguf([ARCHITECTURE_KV], [entry], b"\0" * 64),
            r"tensor 'token_embd.weight' needs bytes \d+\.\.\d{20}")


@pytest.mark.parametrize("dims, problem", [((4,) * 5, "5 dimensions"), ((4, 0), "dimension of size 0")])
def test_tensor_rank_and_empty_dimensions(tmp_path, dims, problem):
    entry = raw_tensor_entry(b"blk.0.attn_q.weight", dims)
    refused(tmp_path, raw_gguf([ARCHITECTURE_KV], [entry], b"\0" * 64), f"'blk.0.attn_q.weight'.*{problem}")


def test_huge_rank_is_refused_before_reading_the_dimensions(tmp_path):
    entry = gguf_string(b"w") + struct.pack("<I", 2 ** 31)
    refused(tmp_path, raw_gguf([ARCHITECTURE_KV], [entry]), "2147483648 dimensions")


def test_tensor_data_offset_past_the_end(tmp_path):
    entry = raw_tensor_entry(b"output_norm.weight", (8,), offset=2 ** 40)
    refused(tmp_path, raw_gguf([ARCHITECTURE_KV], [entry], b"\0" * 64), "truncated tensor data: tensor 'output_norm")


def test_deeply_nested_arrays(tmp_path):
    """200k arrays of arrays: a recursive parser overflows the stack; this one stops at MAX_ARRAY_DEPTH."""
    nested = struct.pack("<IQ", ARRAY, 1) * 200_000 + struct.pack("<IQ", UINT32, 0)
    refused(tmp_path, raw_gguf([ARCHITECTURE_KV, raw_kv(b"x.nested", ARRAY, nested)]),
            f"metadata key 'x.nested'.*nested more than {MAX_ARRAY_DEPTH} deep")


def test_arrays_nested_within_the_limit_are_read(tmp_path):
    nested = struct.pack("<IQ", ARRAY, 1) * (MAX_ARRAY_DEPTH - 1) + struct.pack("<IQI", UINT32, 1, 7)
    path = tmp_path / "nested.gguf"
    path.write_bytes(raw_gguf([ARCHITECTURE_KV, raw_kv(b"x.nested", ARRAY, nested)]))
    value = GGUFCheckpoint(path).metadata["x.nested"]
    for _ in range(MAX_ARRAY_DEPTH - 1):
        value = value[0]
    assert value == [7]


@pytest.mark.parametrize("element_type, count", [(UINT32, 2 ** 62), (STRING, 2 ** 40), (ARRAY, 2 ** 50)])
def test_array_counts_past_the_file_size(tmp_path, element_type, count):
    kv = raw_kv(b"x.huge", ARRAY, struct.pack("<IQ", element_type, count))
    refused(tmp_path, raw_gguf([ARCHITECTURE_KV, kv]), rf"truncated header: .*'x.huge' says {count} items: they cannot fit")


def test_metadata_and_tensor_counts_past_the_file_size(tmp_path):
    huge_kv_count = b"GGUF" + struct.pack("<IQQ", 3, 0, 2 ** 60) + ARCHITECTURE_KV
    refused(tmp_path, huge_kv_count, "metadata count says 1152921504606846976 items")
    huge_tensor_count = b"GGUF" + struct.pack("<IQQ", 3, 2 ** 60, 1) + ARCHITECTURE_KV
    refused(tmp_path, huge_tensor_count, "tensor count says 1152921504606846976 items")


def test_invalid_utf8_token_names_the_key_and_index(tmp_path):
    tokens = [b"<unk>", b"ok", b"\xff\xfebad"]
    payload = struct.pack("<IQ", STRING, len(tokens)) + b"".join(gguf_string(token) for token in tokens)
    refused(tmp_path, raw_gguf([ARCHITECTURE_KV, raw_kv(b"tokenizer.ggml.tokens", ARRAY, payload)]),
            r"metadata key 'tokenizer.ggml.tokens'\[2\] is not valid UTF-8")


@pytest.mark.parametrize("kvs, problem", [
    ([raw_kv(b"general.architecture", STRING, gguf_string(b"\xc3("))], "'general.architecture' is not valid UTF-8"),
    ([ARCHITECTURE_KV, raw_kv(b"\xff", UINT32, b"\0" * 4)], "metadata entry 1's key is not valid UTF-8"),
    ([ARCHITECTURE_KV, raw_kv(b"x.odd", 99, b"")], "'x.odd': unknown metadata value type 99"),
    ([ARCHITECTURE_KV, raw_kv(b"x.odd", ARRAY, struct.pack("<IQ", 99, 1))], "unknown array element type 99"),
    ([ARCHITECTURE_KV, ARCHITECTURE_KV], "'general.architecture' appears twice"),
])
def test_corrupt_metadata_entries(tmp_path, kvs, problem):
    refused(tmp_path, raw_gguf(kvs), problem)


@pytest.mark.parametrize("alignment_kv", [
    raw_kv(b"general.alignment", UINT32, struct.pack("<I", 48)),
    raw_kv(b"general.alignment", STRING, gguf_string(b"abc")),
    raw_kv(b"general.alignment", 10, struct.pack("<Q", 2 ** 40)),
])
def test_alignment_must_be_a_power_of_two(tmp_path, alignment_kv):
    refused(tmp_path, raw_gguf([ARCHITECTURE_KV, alignment_kv]), "general.alignment = .*must be a power of two")


def test_duplicate_tensor_names(tmp_path):
    entry = raw_tensor_entry(b"output_norm.weight", (8,))
    refused(tmp_path, raw_gguf([ARCHITECTURE_KV], [entry, entry], b"\0" * 64), "'output_norm.weight' appears twice")


def test_the_tiny_llama_still_loads(tmp_path):
    """The checks refuse nothing a valid file holds."""
    path = write_tiny_llama(tmp_path / "tiny.gguf")
    model = AutoModelForCausalLM.from_pretrained(path, progress=False)
    assert model.config.num_hidden_layers == 2
    assert AutoTokenizer.from_pretrained(path).convert_ids_to_tokens(5) == "t2"
    with torch.no_grad():
        assert torch.isfinite(model(torch.tensor([[1, 5, 6]])).logits).all()
