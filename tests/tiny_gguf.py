"""A tiny valid Llama GGUF written with the `gguf` package (no transformers), with any metadata key overridden,
and a raw byte builder for headers the `gguf` package refuses to write."""

from __future__ import annotations

import struct

import numpy as np
from gguf import GGUFValueType, GGUFWriter

LAYERS, HIDDEN, HEADS, KV_HEADS, FFN, VOCAB = 2, 32, 4, 2, 48, 40
TOKENS = ["<unk>", "<s>", "</s>"] + [f"t{index}" for index in range(VOCAB - 3)]


def tiny_llama_metadata() -> dict:
    """key -> (value, GGUFValueType, array element type or None)."""
    u32, f32 = GGUFValueType.UINT32, GGUFValueType.FLOAT32
    return {
        "llama.block_count": (LAYERS, u32, None), "llama.embedding_length": (HIDDEN, u32, None),
        "llama.feed_forward_length": (FFN, u32, None), "llama.attention.head_count": (HEADS, u32, None),
        "llama.attention.head_count_kv": (KV_HEADS, u32, None), "llama.context_length": (64, u32, None),
        "llama.vocab_size": (VOCAB, u32, None), "llama.rope.freq_base": (10000.0, f32, None),
        "llama.attention.layer_norm_rms_epsilon": (1e-5, f32, None),
        "tokenizer.ggml.model": ("llama", GGUFValueType.STRING, None),
        "tokenizer.ggml.tokens": (TOKENS, GGUFValueType.ARRAY, GGUFValueType.STRING),
        "tokenizer.ggml.scores": ([0.0] * VOCAB, GGUFValueType.ARRAY, GGUFValueType.FLOAT32),
        "tokenizer.ggml.token_type": ([2, 3, 3] + [1] * (VOCAB - 3), GGUFValueType.ARRAY, GGUFValueType.INT32),
        "tokenizer.ggml.bos_token_id": (1, u32, None), "tokenizer.ggml.eos_token_id": (2, u32, None),
    }


def tiny_llama_tensors(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)

    def weight(*shape):
        return (rng.standard_normal(shape) * 0.1).astype(np.float32)

    head_dim = HIDDEN // HEADS
    tensors = {"token_embd.weight": weight(VOCAB, HIDDEN), "output_norm.weight": np.ones(HIDDEN, np.float32),
               "output.weight": weight(VOCAB, HIDDEN)}
    for layer in range(LAYERS):
        tensors |= {
            f"blk.{layer}.attn_norm.weight": np.ones(HIDDEN, np.float32),
            f"blk.{layer}.ffn_norm.weight": np.ones(HIDDEN, np.float32),
            f"blk.{layer}.attn_q.weight": weight(HIDDEN, HIDDEN),
            f"blk.{layer}.attn_k.weight": weight(KV_HEADS * head_dim, HIDDEN),
            f"blk.{layer}.attn_v.weight": weight(KV_HEADS * head_dim, HIDDEN),
            f"blk.{layer}.attn_output.weight": weight(HIDDEN, HIDDEN),
            f"blk.{layer}.ffn_gate.weight": weight(FFN, HIDDEN),
            f"blk.{layer}.ffn_up.weight": weight(FFN, HIDDEN),
            f"blk.{layer}.ffn_down.weight": weight(HIDDEN, FFN),
        }
    return tensors


def write_tiny_llama(path, metadata: dict | None = None, drop: tuple = (), tensors: dict | None = None):
    """The tiny Llama with `metadata` (key -> (value, type, element type)) replacing or adding keys, `drop`ped
    keys left out, and `tensors` replacing or adding tensors (a None value removes one, a (bytes, type) pair
    is written as those blocks)."""
    writer = GGUFWriter(str(path), "llama")
    for key, (value, kind, element) in (tiny_llama_metadata() | (metadata or {})).items():
        if key not in drop:
            writer.add_key_value(key, value, kind, sub_type=element)
    for name, tensor in (tiny_llama_tensors() | (tensors or {})).items():
        if isinstance(tensor, tuple):  # (block bytes, GGMLQuantizationType): an already quantized tensor
            writer.add_tensor(name, tensor[0], raw_dtype=tensor[1])
        elif tensor is not None:
            writer.add_tensor(name, tensor)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


# ---- raw bytes ------------------------------------------------------------------------------------


def gguf_string(text: bytes) -> bytes:
    return struct.pack("<Q", len(text)) + text


def raw_kv(key: bytes, value_type: int, payload: bytes) -> bytes:
    return gguf_string(key) + struct.pack("<I", value_type) + payload


def raw_gguf(kvs: list[bytes], tensor_entries: list[bytes] = (), data: bytes = b"") -> bytes:
    """A GGUF v3 file from encoded key/value pairs and tensor-table entries (data padded to 32 bytes)."""
    header = b"GGUF" + struct.pack("<IQQ", 3, len(tensor_entries), len(kvs)) + b"".join(kvs) + b"".join(tensor_entries)
    return header + b"\0" * (-len(header) % 32) + data


def raw_tensor_entry(name: bytes, dims: tuple[int, ...], ggml_type: int = 0, offset: int = 0) -> bytes:
    """dims in ggml order (fastest first)."""
    return gguf_string(name) + struct.pack(f"<I{len(dims)}QIQ", len(dims), *dims, ggml_type, offset)


ARCHITECTURE_KV = raw_kv(b"general.architecture", 8, gguf_string(b"llama"))
