"""The GGUF header: magic, version, metadata and tensor table, parsed with every count, size and string checked.

A hostile header cannot make the parser allocate or loop beyond what the file's own size allows: each count
is checked against the bytes left before anything is read, arrays nest at most `MAX_ARRAY_DEPTH` deep,
strings must be UTF-8, and each error names the file and the metadata key or tensor at fault.
"""

from __future__ import annotations

import math
import struct
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..errors import CheckpointError, UnsupportedQuantTypeError
from . import dequant

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)  # v1 used 32-bit counts and is long gone
DEFAULT_ALIGNMENT = 32
MAX_ALIGNMENT = 1 << 20  # llama.cpp writes 32; a larger power of two only pads
MAX_TENSOR_DIMS = 4  # GGML_MAX_DIMS
MAX_ARRAY_DEPTH = 8  # arrays of arrays: real files use one level, the format allows any

# metadata value types: fixed-size scalars as struct formats (8 = string and 9 = array are read apart)
SCALAR_FORMATS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
STRING_TYPE, ARRAY_TYPE = 8, 9
LENGTH = struct.Struct("<Q")
# the fewest bytes one item can take: a key/value pair (empty key, type, one byte), a tensor-table entry
# (empty name, n_dims, type, offset), a string (its length), an array (element type and count)
MIN_KV_BYTES, MIN_TENSOR_ENTRY_BYTES, MIN_STRING_BYTES, MIN_ARRAY_BYTES = 13, 24, 8, 12


class TensorInfo(NamedTuple):
    name: str
    shape: tuple[int, ...]  # torch order (ggml lists the fastest-moving dimension first)
    ggml_type: int
    offset: int  # absolute, from the start of the file
    nbytes: int


class _Truncated(Exception):
    """Raised inside the parser when a read runs past the end of the file."""


class _Corrupt(Exception):
    """Raised inside the parser with what is wrong; the caller adds the file."""


class _HeaderParser:
    """Sequential little-endian reader over the mapped header."""

    def __init__(self, buffer: memoryview):
        self.buffer = buffer
        self.size = len(buffer)
        self.pos = 0

    def take(self, fmt: str):
        width = struct.calcsize("<" + fmt)
        if self.pos + width > self.size:
            raise _Truncated(self.pos)
        values = struct.unpack_from("<" + fmt, self.buffer, self.pos)
        self.pos += width
        return values if len(values) > 1 else values[0]

    def check_count(self, count: int, item_bytes: int, what: str) -> None:
        """Refuse a count whose items cannot fit in the rest of the file, before looping over it."""
        if count * item_bytes > self.size - self.pos:
            raise _Truncated(f"{what} says {count} items: they cannot fit in the {self.size - self.pos} bytes left")

    def string(self, what: str) -> str:
        length = self.take("Q")
        if self.pos + length > self.size:
            raise _Truncated(self.pos)
        raw = bytes(self.buffer[self.pos:self.pos + length])
        self.pos += length
        return _decode(raw, what)

    def strings(self, count: int, what: str) -> list[str]:
        """`count` strings: one pass to find them, one bulk copy, then decoding (a vocabulary has 10^5 of them)."""
        self.check_count(count, MIN_STRING_BYTES, what)
        read_length = LENGTH.unpack_from
        buffer, size, pos = self.buffer, self.size, self.pos
        first = pos
        spans = []
        for _ in range(count):
            if pos + 8 > size:
                raise _Truncated(pos)
            (length,) = read_length(buffer, pos)
            pos += 8
            spans.append((pos - first, length))
            pos += length
            if pos > size:
                raise _Truncated(pos)
        blob = bytes(buffer[first:pos])
        self.pos = pos
        return [_decode(blob[start:start + length], f"{what}[{index}]")
                for index, (start, length) in enumerate(spans)]

    def value(self, value_type: int, what: str, depth: int = 0):
        if value_type in SCALAR_FORMATS:
            return self.take(SCALAR_FORMATS[value_type])
        if value_type == STRING_TYPE:
            return self.string(what)
        if value_type == ARRAY_TYPE:
            return self.array(what, depth + 1)
        raise _Corrupt(f"{what}: unknown metadata value type {value_type}")

    def array(self, what: str, depth: int) -> list:
        if depth > MAX_ARRAY_DEPTH:
            raise _Corrupt(f"{what}: arrays nested more than {MAX_ARRAY_DEPTH} deep")
        element_type, count = self.take("IQ")
        if element_type in SCALAR_FORMATS:
            # numbers in bulk: one numpy read instead of `count` struct calls
            dtype = np.dtype("<" + SCALAR_FORMATS[element_type].replace("?", "b1"))
            self.check_count(count, dtype.itemsize, what)
            values = np.frombuffer(self.buffer, dtype=dtype, count=count, offset=self.pos).tolist()
            self.pos += count * dtype.itemsize
            return values
        if element_type == STRING_TYPE:
            return self.strings(count, what)
        if element_type != ARRAY_TYPE:
            raise _Corrupt(f"{what}: unknown array element type {element_type}")
        self.check_count(count, MIN_ARRAY_BYTES, what)
        return [self.value(element_type, f"{what}[{index}]", depth) for index in range(count)]


def _decode(raw: bytes, what: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise _Corrupt(f"{what} is not valid UTF-8 (byte {error.start}: {raw[:40]!r})") from None


def parse_header(path: Path, buffer: memoryview) -> tuple[dict, list[TensorInfo]]:
    """Metadata and tensor table; errors name the file and the key or tensor at fault."""
    if len(buffer) < 4 or bytes(buffer[:4]) != GGUF_MAGIC:
        raise CheckpointError(path, f"bad magic {bytes(buffer[:4])!r}: not a GGUF file (expected b'GGUF')")
    parser = _HeaderParser(buffer)
    parser.pos = 4
    where = "the version"
    try:
        version = parser.take("I")
        if version not in SUPPORTED_VERSIONS:
            raise CheckpointError(path, f"unsupported GGUF version {version} (supported: 2, 3)")
        where = "the counts"
        tensor_count, kv_count = parser.take("QQ")
        parser.check_count(kv_count, MIN_KV_BYTES, "metadata count")
        metadata = {}
        for index in range(kv_count):
            where = f"metadata entry {index}"
            key = parser.string(f"{where}'s key")
            where = f"metadata key {key!r}"
            if key in metadata:
                raise _Corrupt(f"{where} appears twice")
            metadata[key] = parser.value(parser.take("I"), where)
        parser.check_count(tensor_count, MIN_TENSOR_ENTRY_BYTES, "tensor count")
        entries = []
        for index in range(tensor_count):
            where = f"tensor-table entry {index}"
            entries.append(_tensor_entry(parser, where))
    except CheckpointError:
        raise
    except _Corrupt as error:
        raise CheckpointError(path, f"corrupt header: {error}") from None
    except (_Truncated, struct.error) as error:
        detail = f" ({error.args[0]})" if error.args and isinstance(error.args[0], str) else ""
        raise CheckpointError(path, f"truncated header: the file ends at byte {len(buffer)} inside {where}{detail}") from None
    data_start = _aligned(parser.pos, _alignment(path, metadata))
    return metadata, _tensor_infos(path, entries, data_start, len(buffer))


def _tensor_entry(parser: _HeaderParser, where: str) -> tuple:
    name = parser.string(f"{where}'s name")
    n_dims = parser.take("I")
    if n_dims > MAX_TENSOR_DIMS:
        raise _Corrupt(f"tensor {name!r}: {n_dims} dimensions (GGUF allows at most {MAX_TENSOR_DIMS})")
    dims = parser.take(f"{n_dims}Q") if n_dims else ()
    dims = (dims,) if isinstance(dims, int) else dims
    if 0 in dims:
        raise _Corrupt(f"tensor {name!r}: a dimension of size 0 in {tuple(reversed(dims))}")
    ggml_type, offset = parser.take("IQ")
    return name, tuple(reversed(dims)), ggml_type, offset


def _alignment(path: Path, metadata: dict) -> int:
    alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    if alignment == 0:
        return DEFAULT_ALIGNMENT
    if (not isinstance(alignment, int) or isinstance(alignment, bool) or alignment < 0
            or alignment > MAX_ALIGNMENT or alignment & (alignment - 1)):
        raise CheckpointError(path, f"general.alignment = {alignment!r}: must be a power of two up to {MAX_ALIGNMENT}")
    return alignment


def _aligned(position: int, alignment: int) -> int:
    return -(-position // alignment) * alignment


def _tensor_infos(path: Path, entries: list[tuple], data_start: int, file_size: int) -> list[TensorInfo]:
    infos, seen = [], set()
    for entry in entries:
        if entry[0] in seen:
            raise CheckpointError(path, f"corrupt header: tensor {entry[0]!r} appears twice in the tensor table")
        seen.add(entry[0])
        infos.append(_tensor_info(path, entry, data_start, file_size))
    return infos


def _tensor_info(path: Path, entry: tuple, data_start: int, file_size: int) -> TensorInfo:
    name, shape, ggml_type, offset = entry
    if ggml_type not in dequant.GGML_TYPES or ggml_type >= dequant.TOKENMILL_TYPES_FROM:  # our own ids: never in a file
        raise UnsupportedQuantTypeError(path, f"tensor {name!r} has unknown ggml type id {ggml_type}")
    n_elements = math.prod(shape)  # exact Python integers: 2^32 x 2^32 must not wrap to 0
    block_elements = dequant.GGML_TYPES[ggml_type].block_elements
    if n_elements % block_elements or (shape and shape[-1] % block_elements):
        raise CheckpointError(path, f"tensor {name!r}: shape {shape} does not fit {dequant.type_name(ggml_type)} "
                                    f"blocks of {block_elements}")
    nbytes = dequant.tensor_nbytes(ggml_type, n_elements)
    start = data_start + offset
    if start + nbytes > file_size:
        raise CheckpointError(
            path, f"truncated tensor data: tensor {name!r} needs bytes {start}..{start + nbytes} "
                  f"but the file is {file_size} bytes")
    return TensorInfo(name, shape, ggml_type, start, nbytes)
