"""What this host is and which compute paths a run takes on it: CPU model and vector ISA, the block kernels
built (build.py), the GEMM behind dense float32 matmuls, torch's threads and build. For `tokenmill info
--system` and the bench report, so a number can be traced to the code that produced it."""

from __future__ import annotations

import functools
import platform
from pathlib import Path

import torch

# a GGUF model's float32 prefill past the block kernels' row limit goes through oneDNN's linear (bundled with
# torch) where this torch build has it (layers/quantized_linear.dense_linear), otherwise through F.linear
ONEDNN_LINEAR = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")

# cpuinfo flag names of the ISA features reported, under the names describe() gives them
ISA_FEATURES = {"avx2": ("avx2",), "fma": ("fma",), "f16c": ("f16c",), "avx512f": ("avx512f",),
                "avx512bw": ("avx512bw",), "avx512_bf16": ("avx512_bf16",), "avx512_fp16": ("avx512_fp16",),
                "avx512_vnni": ("avx512_vnni", "avx512vnni"), "amx": ("amx_tile",), "amx_bf16": ("amx_bf16",),
                "amx_int8": ("amx_int8",), "neon": ("asimd", "neon")}


@functools.cache
def _cpuinfo() -> tuple[str, frozenset[str]]:
    """(model name, flags) of the first CPU in /proc/cpuinfo; ("", {}) where there is none (macOS, Windows)."""
    model, flags = "", frozenset()
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return model, flags
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key in ("model name", "Model", "Hardware") and not model:
            model = value.strip()
        elif key in ("flags", "Features") and not flags:
            flags = frozenset(value.split())
    return model, flags


def cpu_model() -> str:
    return _cpuinfo()[0] or platform.processor() or platform.machine()


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as /proc/cpuinfo names them (empty where it cannot be read)."""
    return _cpuinfo()[1]


def isa_features() -> dict[str, bool]:
    flags = cpu_flags()
    return {name: any(flag in flags for flag in names) for name, names in ISA_FEATURES.items()}


def dense_gemm() -> str:
    """The library behind F.linear on float32 CPU tensors: dense models' projections."""
    return "MKL" if torch.backends.mkl.is_available() else "ATen BLAS (no MKL in this torch build)"


def prefill_gemm() -> str:
    """The library behind a GGUF model's prefill past the block kernels' row limit (quantized_linear.dense_linear)."""
    return "oneDNN" if ONEDNN_LINEAR else dense_gemm()


def describe() -> dict:
    """This host and the compute paths a float32 CPU run takes on it (builds the kernels if not yet built)."""
    from . import build, library  # here, not above: describing the host must not compile anything at import

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
