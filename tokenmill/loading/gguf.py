"""GGUF checkpoints: a memory-mapped reader, and the Hugging Face config / weights / tokenizer it describes.

The file is mapped copy-on-write, so tensor bytes are read lazily by the OS and wrapped with
`torch.frombuffer` without a copy; only dequantization writes new memory.
"""

from __future__ import annotations

import mmap
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Mapping

import torch

from .. import kernels
from ..errors import CheckpointError, UnsupportedArchitectureError, UnsupportedQuantTypeError
from ..layers.quantized_linear import QuantizedWeight
from . import dequant, gguf_arch, gguf_limits
from .gguf_header import TensorInfo, parse_header


def _map_file(path: Path, populate: bool = True) -> mmap.mmap:
    try:
        with open(path, "rb") as handle:
            # private (copy-on-write) and, where the OS can, populated up front: every page is read while
            # loading anyway, and faulting them in one by one cost ~0.5 s for a 94 MB file
            populate = getattr(mmap, "MAP_POPULATE", 0) if populate else 0
            if populate and hasattr(mmap, "MAP_PRIVATE"):
                return mmap.mmap(handle.fileno(), 0, flags=mmap.MAP_PRIVATE | populate,
                                 prot=mmap.PROT_READ | mmap.PROT_WRITE)
            return mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_COPY)
    except FileNotFoundError:
        raise CheckpointError(path, "GGUF file not found") from None
    except ValueError:  # mmap refuses an empty file
        raise CheckpointError(path, "empty file: not a GGUF checkpoint") from None


class GGUFCheckpoint:
    """One GGUF file: metadata, tensors, and what they mean in Hugging Face terms."""

    def __init__(self, path, architectures: Mapping[str, gguf_arch.ArchSpec] | None = None, populate: bool = True):
        """architectures: GGUF architecture name -> its spec (models.registry.gguf_architectures()), needed for
        the config and the weights; without it only the metadata, tokenizer and generation config are read.
        populate=False: pages are read when first touched (a model placed partly on disk never reads them all)."""
        self.path = Path(path)
        self._mapping = _map_file(self.path, populate)
        self._populated = populate
        self.metadata, infos = parse_header(self.path, memoryview(self._mapping))
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
        """The Hugging Face config; the metadata's sizes are checked first, the result against the tensors."""
        gguf_limits.check_metadata(self.path, self.metadata, self.arch.name)
        try:
            config = self.arch.config(self.metadata, self.tensors, self.gguf_tensor)
        except CheckpointError:
            raise
        except (ArithmeticError, TypeError, ValueError, KeyError, IndexError) as error:
            raise CheckpointError(self.path, f"cannot derive a {self.architecture} config from the metadata: "
                                             f"{type(error).__name__}: {error}") from None
        gguf_limits.check_config(self.path, config, self.tensors, self.arch.name)
        return config

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
        if not self._populated and hasattr(mmap, "MADV_DONTNEED"):
            # the copies made above (Q/K unpermuted) read their pages, and a fault maps whole page-cache folios
            # around them: unmapped again, so a model placed partly on disk holds no more than it uses
            self._mapping.madvise(mmap.MADV_DONTNEED)
        return weights

    # ---- tokenizer ----------------------------------------------------------------------------------

    def tokenizer(self):
        from .gguf_tokenizer import build_tokenizer

        gguf_limits.check_token_metadata(self.path, self.metadata)
        try:
            return build_tokenizer(self.metadata, self.path)
        except CheckpointError:
            raise
        except Exception as error:  # the tokenizers library raises plain Exception for a vocabulary it refuses
            raise CheckpointError(self.path, f"cannot build a tokenizer from the tokenizer.ggml metadata: "
                                             f"{type(error).__name__}: {error}") from None

    def tokenizer_config(self) -> dict:
        from .gguf_tokenizer import tokenizer_config

        gguf_limits.check_token_metadata(self.path, self.metadata)
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
