"""GGUF checkpoints: a memory-mapped reader, and the Hugging Face config / weights / tokenizer it describes.

The file is mapped copy-on-write, so tensor bytes are read lazily by the OS and wrapped with
`torch.frombuffer` without a copy; only dequantization writes new memory.
"""

from __future__ import annotations

import mmap
import struct
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Mapping, NamedTuple

import numpy as np
import torch

from .. import kernels
from ..errors import CheckpointError, UnsupportedArchitectureError, UnsupportedQuantTypeError
from ..layers.quantized_linear import QuantizedWeight
from . import dequant, gguf_arch

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)  # v1 used 32-bit counts and is long gone
DEFAULT_ALIGNMENT = 32

# metadata value types: fixed-size scalars as struct formats (8 = string and 9 = array are read apart)
SCALAR_FORMATS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
STRING_TYPE, ARRAY_TYPE = 8, 9
LENGTH = struct.Struct("<Q")


class TensorInfo(NamedTuple):
    name: str
    shape: tuple[int, ...]  # torch order (ggml lists the fastest-moving dimension first)
    ggml_type: int
    offset: int  # absolute, from the start of the file
    nbytes: int


class _Truncated(Exception):
    """Raised inside the parser when a read runs past the end of the file."""


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

    def string(self) -> str:
        length = self.take("Q")
        if self.pos + length > self.size:
            raise _Truncated(self.pos)
        raw = bytes(self.buffer[self.pos:self.pos + length])
        self.pos += length
        return raw.decode("utf-8", errors="replace")

    def strings(self, count: int) -> list[str]:
        """`count` strings: one pass to find them, one bulk copy, then decoding (a vocabulary has 10^5 of them)."""
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
        return [blob[start:start + length].decode("utf-8", errors="replace") for start, length in spans]

    def value(self, value_type: int):
        if value_type in SCALAR_FORMATS:
            return self.take(SCALAR_FORMATS[value_type])
        if value_type == STRING_TYPE:
            return self.string()
        if value_type == ARRAY_TYPE:
            return self.array()
        raise ValueError(f"unknown metadata value type {value_type} at byte {self.pos}")

    def array(self) -> list:
        element_type, count = self.take("IQ")
        if element_type in SCALAR_FORMATS:
            # numbers in bulk: one numpy read instead of `count` struct calls
            dtype = np.dtype("<" + SCALAR_FORMATS[element_type].replace("?", "b1"))
            end = self.pos + count * dtype.itemsize
            if end > self.size:
                raise _Truncated(self.pos)
            values = np.frombuffer(self.buffer, dtype=dtype, count=count, offset=self.pos).tolist()
            self.pos = end
            return values
        if element_type == STRING_TYPE:
            return self.strings(count)
        return [self.value(element_type) for _ in range(count)]


def _map_file(path: Path) -> mmap.mmap:
    try:
        with open(path, "rb") as handle:
            # private (copy-on-write) and, where the OS can, populated up front: every page is read while
            # loading anyway, and faulting them in one by one cost ~0.5 s for a 94 MB file
            populate = getattr(mmap, "MAP_POPULATE", 0)
            if populate and hasattr(mmap, "MAP_PRIVATE"):
                return mmap.mmap(handle.fileno(), 0, flags=mmap.MAP_PRIVATE | populate,
                                 prot=mmap.PROT_READ | mmap.PROT_WRITE)
            return mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_COPY)
    except FileNotFoundError:
        raise CheckpointError(path, "GGUF file not found") from None
    except ValueError:  # mmap refuses an empty file
        raise CheckpointError(path, "empty file: not a GGUF checkpoint") from None


def _parse_header(path: Path, buffer: memoryview) -> tuple[dict, list[TensorInfo]]:
    """Metadata and tensor table; errors name the file and what is wrong with it."""
    if len(buffer) < 4 or bytes(buffer[:4]) != GGUF_MAGIC:
        raise CheckpointError(path, f"bad magic {bytes(buffer[:4])!r}: not a GGUF file (expected b'GGUF')")
    parser = _HeaderParser(buffer)
    parser.pos = 4
    try:
        version = parser.take("I")
        if version not in SUPPORTED_VERSIONS:
            raise CheckpointError(path, f"unsupported GGUF version {version} (supported: 2, 3)")
        tensor_count, kv_count = parser.take("QQ")
        metadata = {}
        for _ in range(kv_count):
            key = parser.string()
            metadata[key] = parser.value(parser.take("I"))
        entries = []
        for _ in range(tensor_count):
            name = parser.string()
            n_dims = parser.take("I")
            dims = struct.unpack_from(f"<{n_dims}Q", buffer, parser.pos) if n_dims else ()
            parser.pos += 8 * n_dims
            ggml_type, offset = parser.take("IQ")
            entries.append((name, tuple(reversed(dims)), ggml_type, offset))
    except CheckpointError:
        raise
    except (_Truncated, struct.error):
        raise CheckpointError(path, f"truncated header: the file ends at byte {len(buffer)} inside the metadata") from None
    except (ValueError, OverflowError, MemoryError) as error:
        raise CheckpointError(path, f"corrupt header: {error}") from None
    alignment = int(metadata.get("general.alignment", DEFAULT_ALIGNMENT)) or DEFAULT_ALIGNMENT
    data_start = -(-parser.pos // alignment) * alignment
    return metadata, [_tensor_info(path, entry, data_start, len(buffer)) for entry in entries]


def _tensor_info(path: Path, entry: tuple, data_start: int, file_size: int) -> TensorInfo:
    name, shape, ggml_type, offset = entry
    if ggml_type not in dequant.GGML_TYPES or ggml_type >= dequant.TOKENMILL_TYPES_FROM:
        raise UnsupportedQuantTypeError(path, f"tensor {name!r} has unknown ggml type id {ggml_type}")
    n_elements = int(np.prod(shape, dtype=np.int64)) if shape else 1
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


class GGUFCheckpoint:
    """One GGUF file: metadata, tensors, and what they mean in Hugging Face terms."""

    def __init__(self, path, architectures: Mapping[str, gguf_arch.ArchSpec] | None = None):
        """architectures: GGUF architecture name -> its spec (models.registry.gguf_architectures()), needed for
        the config and the weights; without it only the metadata, tokenizer and generation config are read."""
        self.path = Path(path)
        self._mapping = _map_file(self.path)
        self.metadata, infos = _parse_header(self.path, memoryview(self._mapping))
        self.tensors: dict[str, TensorInfo] = {info.name: info for info in infos}
        architecture = self.metadata.get("general.architecture")
        if not isinstance(architecture, str):
            raise CheckpointError(self.path, "no general.architecture in the metadata")
        self.architecture = architecture
        self._arch = None
        if architectures is not None:
            try:
                self._arch = gguf_arch.spec_for(architecture, architectures)
            except UnsupportedArchitectureError as error:
                error.args = (f"{self.path}: {error}",)  # the message names the file too
                raise

    @property
    def arch(self) -> gguf_arch.ArchSpec:
        if self._arch is None:
            raise TypeError(f"{self.path}: opened without architecture specs; pass "
                            f"GGUFCheckpoint(path, architectures) to read its config or weights")
        return self._arch

    def __repr__(self) -> str:
        return f"GGUFCheckpoint({str(self.path)!r}, architecture={self.architecture!r}, tensors={len(self.tensors)})"

    # ---- config -------------------------------------------------------------------------------------

    def config_dict(self) -> dict:
        return self.arch.config(self.metadata, self.tensors, self.gguf_tensor)

    def generation_config_dict(self) -> dict:
        ids = {
            "bos_token_id": self.metadata.get("tokenizer.ggml.bos_token_id"),
            "eos_token_id": self.metadata.get("tokenizer.ggml.eos_token_id"),
            "pad_token_id": self.metadata.get("tokenizer.ggml.padding_token_id"),
        }
        return {key: value for key, value in ids.items() if value is not None}

    # ---- weights ------------------------------------------------------------------------------------

    def tensor_types(self) -> dict[str, str]:
        """HF parameter name -> GGUF type name."""
        names = self.arch.parameter_names(self.tensors, self.metadata)
        return {hf_name: dequant.type_name(self.tensors[gguf_name].ggml_type) for gguf_name, hf_name in names}

    def raw_tensor(self, name: str) -> torch.Tensor:
        """The stored bytes of tensor `name` as a 1D uint8 view of the mapping (no copy)."""
        info = self.tensors[name]
        return torch.frombuffer(self._mapping, dtype=torch.uint8, count=info.nbytes, offset=info.offset)

    def gguf_tensor(self, name: str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Tensor `name` (GGUF naming) dequantized to `dtype`, as stored: no llama.cpp quirk undone."""
        info = self.tensors[name]
        if not dequant.is_supported(info.ggml_type):
            raise UnsupportedQuantTypeError(
                self.path, f"tensor {name!r} uses ggml type {dequant.type_name(info.ggml_type)}, which tokenmill "
                           f"cannot dequantize (supported: {', '.join(sorted(dequant.SUPPORTED_TYPES))})")
        raw = self.raw_tensor(name)
        if info.offset % 8:  # a typed view needs an aligned start; copy the odd case
            raw = raw.clone()
        return dequant.dequantize(raw, info.ggml_type, info.shape, dtype)

    def quantized_weight(self, gguf_name: str, config: dict) -> QuantizedWeight | None:
        """Tensor `gguf_name` kept in its block format for the float32 GGUF kernels, or None if it must be
        dequantized: not a 2D block type the kernels know, or a quirk that changes values or columns."""
        info = self.tensors[gguf_name]
        if (len(info.shape) != 2 or not kernels.supports(info.ggml_type) or self.arch.needs_fixup(gguf_name)
                or not self.arch.keeps_rows(gguf_name)):
            return None
        rows, columns = info.shape
        blocks = self.raw_tensor(gguf_name).view(rows, -1)
        # llama.cpp's Q/K row permutation moves whole rows, so it is undone on the stored bytes as well
        blocks = self.arch.fixup(gguf_name, blocks, config)
        return QuantizedWeight(blocks, info.ggml_type, columns)

    def state_dict(self, dtype: torch.dtype = torch.float32, progress: bool = True,
                   keep_quantized: bool = False) -> dict[str, torch.Tensor | QuantizedWeight]:
        """HF-named parameters, dequantized to `dtype`, with llama.cpp's conversion quirks undone.

        keep_quantized: leave every tensor the float32 kernels can use in its block format (a QuantizedWeight).
        """
        names = self.arch.parameter_names(self.tensors, self.metadata)
        config = self.config_dict()
        kept = {}
        if keep_quantized:
            with one_thread_per_op():  # row copies (the Q/K unpermute) are memory-bound: see one_thread_per_op
                kept = {pair: weight for pair in names
                        if (weight := self.quantized_weight(pair[0], config)) is not None}

        def load(pair: tuple[str, str]) -> torch.Tensor:
            gguf_name = pair[0]
            # quirks are undone in float32, then cast: a `w + 1` norm loses precision if rounded first
            compute_dtype = torch.float32 if self.arch.needs_fixup(gguf_name) else dtype
            return self.arch.fixup(gguf_name, self.gguf_tensor(gguf_name, compute_dtype), config).to(dtype)

        # biggest first, so the workers finish together
        order = sorted((pair for pair in names if pair not in kept), key=lambda pair: -self.tensors[pair[0]].nbytes)
        with one_thread_per_op() as workers, ThreadPoolExecutor(workers) as pool:
            loaded = dict(zip(order, _progress(pool.map(load, order), progress, len(order))))
        loaded.update(kept)
        weights: dict[str, torch.Tensor | QuantizedWeight] = {}
        for gguf_name, hf_name in names:
            self.arch.store(weights, gguf_name, hf_name, loaded[gguf_name, hf_name])
        return weights

    # ---- tokenizer ----------------------------------------------------------------------------------

    def tokenizer(self):
        from .gguf_tokenizer import build_tokenizer

        return build_tokenizer(self.metadata, self.path)

    def tokenizer_config(self) -> dict:
        from .gguf_tokenizer import tokenizer_config

        return tokenizer_config(self.metadata)


@contextmanager
def one_thread_per_op():
    """Parallelize over tensors with Python threads instead of inside each op.

    Each torch op's thread team waits at a barrier for all its threads; on a busy machine one descheduled
    thread stalls every op (measured: 0.3 s -> 10 s). Independent single-threaded ops do not stall.
    """
    workers = max(1, torch.get_num_threads())
    torch.set_num_threads(1)
    try:
        yield workers
    finally:
        torch.set_num_threads(workers)


def _progress(items, enabled: bool, total: int):
    """A tqdm bar that only appears if the loop is still running after half a second."""
    if not enabled:
        return items
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return items
    return tqdm(items, desc="Dequantizing GGUF tensors", total=total, delay=0.5, leave=False)
