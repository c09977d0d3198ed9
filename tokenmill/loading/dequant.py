"""Vectorized torch dequantizers for ggml tensor types.

Each kernel takes the raw bytes of a tensor as a 2D uint8 tensor of shape (n_blocks, block_bytes) and
returns float32 values of shape (n_blocks, block_elements). The arithmetic is done in float32 in the same
order as ggml's reference code, so results are bit-identical to gguf-py's `gguf.quants.dequantize`.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import torch

from ..kernels.gguf_types import TYPES as BLOCK_TYPES

QK_K = 256  # elements in a "K-quant" super-block

# llama.cpp's non-linear 4-bit code book, shared by IQ4_NL and IQ4_XS
IQ4_VALUES = (-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113)

# tokenmill's own NF4 / FP4 blocks (IQ4_NL's layout, made only by quantizing at load): bitsandbytes' code books,
# sorted, as the float32 values kernels/tables.h holds (9 significant digits name each float32 exactly)
NF4_VALUES = (-1.0, -0.696192801, -0.525073051, -0.394917488, -0.284441382, -0.18477343, -0.0910500363, 0.0,
              0.0795802996, 0.160930201, 0.246112302, 0.337915242, 0.440709829, 0.562617004, 0.722956836, 1.0)
FP4_VALUES = (-1.0, -0.666666687, -0.5, -0.333333343, -0.25, -0.166666672, -0.00520833349, -0.0, 0.0,
              0.00520833349, 0.166666672, 0.25, 0.333333343, 0.5, 0.666666687, 1.0)

# Work in row chunks of about this many output elements: intermediates stay cache-sized and the
# float32 scratch of a huge embedding table is never allocated all at once.
CHUNK_ELEMENTS = 1 << 20


class GGMLType(NamedTuple):
    name: str
    block_elements: int
    block_bytes: int


# ids and block sizes from the one table the C kernels are built from (kernels/gguf_types.h)
GGML_TYPES: dict[int, GGMLType] = {type_id: GGMLType(block.name, block.block_elements, block.block_bytes)
                                   for type_id, block in BLOCK_TYPES.items()}

TOKENMILL_TYPES_FROM = 1000  # ids from here are tokenmill's own block types (gguf_types.h), never in a GGUF file

# plain element types: the bytes are reinterpreted, not unpacked
PLAIN_DTYPES = {
    "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64,
    "I8": torch.int8, "I16": torch.int16, "I32": torch.int32, "I64": torch.int64,
}


def type_name(ggml_type: int) -> str:
    info = GGML_TYPES.get(ggml_type)
    return info.name if info else f"unknown type {ggml_type}"


def tensor_nbytes(ggml_type: int, n_elements: int) -> int:
    info = GGML_TYPES[ggml_type]
    return n_elements // info.block_elements * info.block_bytes


def _half(blocks: torch.Tensor, offset: int) -> torch.Tensor:
    """The float16 field at byte `offset` of every block, as float32 of shape (n, 1)."""
    field = blocks[:, offset:offset + 2]
    if blocks.stride(0) % 2 or offset % 2 or blocks.storage_offset() % 2:
        field = field.contiguous()
    return field.view(torch.float16).float()


def _nibbles(packed: torch.Tensor) -> torch.Tensor:
    """(n, k) bytes -> (n, 2, k): low nibbles first, then high nibbles (ggml's 4-bit layout)."""
    return torch.stack((packed & 0x0F, packed >> 4), dim=1)


def _bits(packed: torch.Tensor) -> torch.Tensor:
    """(n, k) bytes -> (n, 8, k): bit j of every byte in row j."""
    shifts = torch.arange(8, dtype=torch.uint8).view(1, 8, 1)
    return (packed.unsqueeze(1) >> shifts) & 1


def _crumbs(packed: torch.Tensor) -> torch.Tensor:
    """(n, k) bytes -> (n, 4, k): the four 2-bit fields, lowest first."""
    shifts = torch.tensor([0, 2, 4, 6], dtype=torch.uint8).view(1, 4, 1)
    return (packed.unsqueeze(1) >> shifts) & 3


def _bits_of_words(packed: torch.Tensor) -> torch.Tensor:
    """(n, 4) bytes of a little-endian uint32 -> (n, 32) bits, bit i at column i."""
    shifts = torch.arange(8, dtype=torch.uint8).view(1, 1, 8)
    return ((packed.unsqueeze(2) >> shifts) & 1).reshape(packed.shape[0], 32)


def dequant_q8_0(blocks: torch.Tensor) -> torch.Tensor:
    d = _half(blocks, 0)
    return blocks[:, 2:].view(torch.int8).float().mul_(d)


def dequant_q4_0(blocks: torch.Tensor) -> torch.Tensor:
    d = _half(blocks, 0)
    q = _nibbles(blocks[:, 2:]).view(-1, 32).float().sub_(8)
    return q.mul_(d)


def dequant_q4_1(blocks: torch.Tensor) -> torch.Tensor:
    d, m = _half(blocks, 0), _half(blocks, 2)
    q = _nibbles(blocks[:, 4:]).view(-1, 32).float()
    return q.mul_(d).add_(m)


def _five_bit(qh: torch.Tensor, qs: torch.Tensor) -> torch.Tensor:
    return _nibbles(qs).view(-1, 32) | (_bits_of_words(qh) << 4)


def dequant_q5_0(blocks: torch.Tensor) -> torch.Tensor:
    d = _half(blocks, 0)
    q = _five_bit(blocks[:, 2:6], blocks[:, 6:]).float().sub_(16)
    return q.mul_(d)


def dequant_q5_1(blocks: torch.Tensor) -> torch.Tensor:
    d, m = _half(blocks, 0), _half(blocks, 2)
    q = _five_bit(blocks[:, 4:8], blocks[:, 8:]).float()
    return q.mul_(d).add_(m)


def dequant_q2_k(blocks: torch.Tensor) -> torch.Tensor:
    n = blocks.shape[0]
    scales = blocks[:, :16]
    d, dmin = _half(blocks, 80), _half(blocks, 82)
    dl = (d * (scales & 0x0F).float()).view(n, 16, 1)
    ml = (dmin * (scales >> 4).float()).view(n, 16, 1)
    q = _crumbs(blocks[:, 16:80].reshape(n * 2, 32)).view(n, 16, 16).float()
    return q.mul_(dl).sub_(ml).view(n, QK_K)


def _q3_k_scales(packed: torch.Tensor) -> torch.Tensor:
    """12 bytes -> 16 signed 6-bit scales: low nibbles from bytes 0-7, high 2 bits from bytes 8-11."""
    low = _nibbles(packed[:, :8]).reshape(-1, 16)
    high = _crumbs(packed[:, 8:12]).reshape(-1, 16)
    return ((low | (high << 4)).view(torch.int8) - 32).float()


def dequant_q3_k(blocks: torch.Tensor) -> torch.Tensor:
    n = blocks.shape[0]
    d = _half(blocks, 108)
    dl = (d * _q3_k_scales(blocks[:, 96:108])).view(n, 16, 1)
    low = _crumbs(blocks[:, 32:96].reshape(n * 2, 32)).view(n, 16, 16)
    # a *clear* high bit means "subtract 4"
    high = (_bits(blocks[:, :32]) ^ 1).view(n, 16, 16)
    q = (low.view(torch.int8) - (high << 2).view(torch.int8)).float()
    return q.mul_(dl).view(n, QK_K)


def _k_scale_min(packed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The 12-byte Q4_K/Q5_K header -> 8 six-bit scales and 8 six-bit mins."""
    first, second, third = packed[:, 0:4], packed[:, 4:8], packed[:, 8:12]
    scale = torch.cat((first & 0x3F, (third & 0x0F) | ((first >> 2) & 0x30)), dim=1)
    minimum = torch.cat((second & 0x3F, (third >> 4) | ((second >> 2) & 0x30)), dim=1)
    return scale.float(), minimum.float()


def dequant_q4_k(blocks: torch.Tensor) -> torch.Tensor:
    n = blocks.shape[0]
    d, dmin = _half(blocks, 0), _half(blocks, 2)
    scale, minimum = _k_scale_min(blocks[:, 4:16])
    dl, ml = (d * scale).view(n, 8, 1), (dmin * minimum).view(n, 8, 1)
    q = _nibbles(blocks[:, 16:].reshape(n * 4, 32)).view(n, 8, 32).float()
    return q.mul_(dl).sub_(ml).view(n, QK_K)


def dequant_q5_k(blocks: torch.Tensor) -> torch.Tensor:
    n = blocks.shape[0]
    d, dmin = _half(blocks, 0), _half(blocks, 2)
    scale, minimum = _k_scale_min(blocks[:, 4:16])
    dl, ml = (d * scale).view(n, 8, 1), (dmin * minimum).view(n, 8, 1)
    low = _nibbles(blocks[:, 48:].reshape(n * 4, 32)).view(n, 8, 32)
    high = _bits(blocks[:, 16:48]).view(n, 8, 32)
    q = (low | (high << 4)).float()
    return q.mul_(dl).sub_(ml).view(n, QK_K)


def dequant_q6_k(blocks: torch.Tensor) -> torch.Tensor:
    n = blocks.shape[0]
    d = _half(blocks, 208)
    dl = (d * blocks[:, 192:208].view(torch.int8).float()).view(n, 16, 1)
    low = _nibbles(blocks[:, :128].reshape(n * 2, 64)).view(n, 8, 32)
    high = _crumbs(blocks[:, 128:192].reshape(n * 2, 32)).view(n, 8, 32)
    q = ((low | (high << 4)).view(torch.int8) - 32).view(n, 16, 16).float()
    return q.mul_(dl).view(n, QK_K)


def _iq4_lookup(codes: torch.Tensor) -> torch.Tensor:
    table = torch.tensor(IQ4_VALUES, dtype=torch.float32)
    return table[codes.long()]


def dequant_iq4_nl(blocks: torch.Tensor) -> torch.Tensor:
    d = _half(blocks, 0)
    return _iq4_lookup(_nibbles(blocks[:, 2:]).view(-1, 32)).mul_(d)


def _code_book_dequantizer(values: tuple[float, ...]) -> Callable[[torch.Tensor], torch.Tensor]:
    """A float16 scale, then 32 nibbles indexing `values` (IQ4_NL's layout)."""
    def dequant_code_book(blocks: torch.Tensor) -> torch.Tensor:
        table = torch.tensor(values, dtype=torch.float32)
        return table[_nibbles(blocks[:, 2:]).view(-1, 32).long()].mul_(_half(blocks, 0))
    return dequant_code_book


def dequant_iq4_xs(blocks: torch.Tensor) -> torch.Tensor:
    n = blocks.shape[0]
    d = _half(blocks, 0)
    high_bits = blocks[:, 2:4].contiguous().view(torch.int16).int()  # uint16 read through int32
    shifts = torch.arange(0, 16, 2, dtype=torch.int32).view(1, 8)
    high = ((high_bits >> shifts) & 3).to(torch.uint8)
    low = (blocks[:, 4:8].unsqueeze(2) >> torch.tensor([0, 4], dtype=torch.uint8)).reshape(n, 8) & 0x0F
    scales = ((low | (high << 4)).view(torch.int8) - 32).float()
    dl = (d * scales).view(n, 8, 1)
    q = _iq4_lookup(_nibbles(blocks[:, 8:].reshape(n * 8, 16)).view(n, 8, 32))
    return q.mul_(dl).view(n, QK_K)


BLOCK_KERNELS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "Q8_0": dequant_q8_0, "Q4_0": dequant_q4_0, "Q4_1": dequant_q4_1,
    "Q5_0": dequant_q5_0, "Q5_1": dequant_q5_1,
    "Q2_K": dequant_q2_k, "Q3_K": dequant_q3_k, "Q4_K": dequant_q4_k,
    "Q5_K": dequant_q5_k, "Q6_K": dequant_q6_k,
    "IQ4_NL": dequant_iq4_nl, "IQ4_XS": dequant_iq4_xs,
    "NF4": _code_book_dequantizer(NF4_VALUES), "FP4": _code_book_dequantizer(FP4_VALUES),
}

SUPPORTED_TYPES = frozenset(BLOCK_KERNELS) | frozenset(PLAIN_DTYPES)


def is_supported(ggml_type: int) -> bool:
    return type_name(ggml_type) in SUPPORTED_TYPES


def dequantize(raw: torch.Tensor, ggml_type: int, shape: tuple[int, ...],
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Values of a tensor stored as `raw` (1D uint8) in ggml type `ggml_type`, shaped `shape` (torch order).

    Raises KeyError for a type with no kernel; callers turn that into an error naming the tensor.
    """
    name = type_name(ggml_type)
    if name in PLAIN_DTYPES:
        values = raw.view(PLAIN_DTYPES[name]).view(shape)
        return values if values.dtype == dtype else values.to(dtype)
    kernel = BLOCK_KERNELS[name]
    info = GGML_TYPES[ggml_type]
    blocks = raw.view(-1, info.block_bytes)
    n_blocks = blocks.shape[0]
    step = max(1, CHUNK_ELEMENTS // info.block_elements)
    if n_blocks <= step:
        return kernel(blocks).to(dtype).view(shape)
    out = torch.empty(n_blocks, info.block_elements, dtype=dtype)
    for start in range(0, n_blocks, step):
        out[start:start + step] = kernel(blocks[start:start + step])
    return out.view(shape)
