"""What this host is and which compute paths a run takes on it: CPU model and vector ISA, the block kernels
built (build.py), the GEMM behind dense float32 matmuls, torch's threads and build. For `tokenmill info
--system` and the bench report, so a number can be traced to the code that produced it."""

from __future__ import annotations

import ctypes
import platform
from pathlib import Path

import torch

from .cpu import cpu_model, isa_features

# a GGUF model's float32 prefill past the block kernels' row limit goes through oneDNN's linear (bundled with
# torch) where this torch build has it (layers/quantized_linear.dense_linear), otherwise through F.linear
ONEDNN_LINEAR = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def return_freed_memory() -> None:
    """Give the allocator's freed pages back to the OS (glibc keeps them in per-thread arenas): the parallel
    dequantization frees as much as it keeps, measured ~300 MB of RSS for SmolLM2 in float32."""
    trim = getattr(ctypes.CDLL(None), "malloc_trim", None)  # the process's own symbols: glibc's, if it is glibc
    if trim is not None:
        trim(0)


def available_memory() -> int | None:
    """MemAvailable from /proc/meminfo in bytes (what can be allocated without swapping); None where unread."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def dense_gemm() -> str:
    """The library behind F.linear on float32 CPU tensors: dense models' projections."""
    return "MKL" if torch.backends.mkl.is_available() else "ATen BLAS (no MKL in this torch build)"


def prefill_gemm() -> str:
    """The library behind a GGUF model's prefill past the block kernels' row limit (quantized_linear.dense_linear)."""
    return "oneDNN" if ONEDNN_LINEAR else dense_gemm()


def describe() -> dict:
    """This host and the compute paths a float32 CPU run takes on it (builds the kernels if not yet built)."""
    from . import build, library  # here, not above: importing this module must not load the kernels package

    lib = library()
    return {
        "cpu_model": cpu_model(),
        "machine": platform.machine(),
        "isa": isa_features(),
        "block_kernels": {
            "requested_isa": build.requested_isa(),
            "built_isa": lib.tm_build_isa().decode() if lib is not None else None,
            "available": lib is not None,
        },
        "gemm": {"dense": dense_gemm(), "prefill": prefill_gemm()},
        "torch": {
            "version": torch.__version__,
            "threads": torch.get_num_threads(),
            "interop_threads": torch.get_num_interop_threads(),
            "mkl": torch.backends.mkl.is_available(),
            "mkldnn": torch.backends.mkldnn.is_available(),
            "openmp": torch.backends.openmp.is_available(),
            "cuda": torch.version.cuda,
        },
    }
