"""Native CPU kernels: float32 matmuls over GGUF block-quantized weights (see gguf_blocks.c) and the row-wise
float32 ops of the decode step whose ATen dispatch costs more than their arithmetic (elementwise.c).

The C source is compiled once per machine with the system C compiler and loaded with ctypes; no build step
at install time and no compiler headers from torch. It links libgomp by soname, so it shares the OpenMP
runtime torch has already loaded. If no compiler is present (or TOKENMILL_KERNELS=0), `available()` is
False and callers keep dense float32 weights instead.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import torch

SOURCES = [Path(__file__).with_name(name) for name in ("gguf_blocks.c", "gguf_avx512.c", "elementwise.c")]
# no fp contraction: `d * q + m` must round twice, exactly as the torch dequantizers do
FLAGS = ["-O3", "-march=native", "-mprefer-vector-width=512", "-ffp-contract=off", "-fopenmp", "-fPIC",
         "-shared", "-std=c11"]

def _cache_dir() -> Path:
    root = os.environ.get("TOKENMILL_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "tokenmill")
    return Path(root) / "kernels"


def _cpu_signature() -> str:
    """What -march=native depends on: a binary built for one CPU may not run on another."""
    flags = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                flags = line
                break
    except OSError:
        pass
    return f"{platform.machine()} {platform.processor()} {flags}"


def _library_path(compiler: str) -> Path:
    digest = hashlib.sha256()
    for part in (*(source.read_bytes() for source in SOURCES), " ".join(FLAGS).encode(), compiler.encode(), _cpu_signature().encode()):
        digest.update(part)
    return _cache_dir() / f"gguf_blocks-{digest.hexdigest()[:16]}.so"


def _compile(compiler: str, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    # build beside the target and rename: concurrent processes never load a half-written file
    with tempfile.NamedTemporaryFile(dir=target.parent, suffix=".so", delete=False) as handle:
        partial = Path(handle.name)
    try:
        subprocess.run([compiler, *FLAGS, *map(str, SOURCES), "-lm", "-o", str(partial)], check=True, capture_output=True,
                       text=True, timeout=120)
        os.replace(partial, target)
    except subprocess.CalledProcessError as error:
        raise RuntimeError(f"{compiler} failed: {error.stderr.strip()[-400:]}") from None
    finally:
        partial.unlink(missing_ok=True)


def _bind(library: ctypes.CDLL) -> ctypes.CDLL:
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    library.tm_supports.argtypes = [ctypes.c_int]
    library.tm_matmul.argtypes = [ptr, i64, ctypes.c_int, i64, i64, ptr, i64, ptr, ctypes.c_int]
    library.tm_dequant_rows.argtypes = [ptr, i64, ctypes.c_int, i64, ptr, i64, ptr, ctypes.c_int]
    library.tm_rms_norm.argtypes = [ptr, i64, i64, ptr, ctypes.c_float, ctypes.c_int, ptr, ctypes.c_int]
    for function in (library.tm_supports, library.tm_matmul, library.tm_dequant_rows, library.tm_rms_norm):
        function.restype = ctypes.c_int
    return library


def _load() -> ctypes.CDLL:
    if os.environ.get("TOKENMILL_KERNELS", "1") == "0":
        raise RuntimeError("disabled by TOKENMILL_KERNELS=0")
    if platform.machine().lower() not in ("x86_64", "amd64", "aarch64", "arm64"):
        raise RuntimeError(f"no kernels for {platform.machine()}")
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if compiler is None:
        raise RuntimeError("no C compiler (cc, gcc or clang) on PATH")
    path = _library_path(compiler)
    if not path.is_file():
        print(f"tokenmill: compiling the CPU kernels for this machine into {path.parent} (once; ~10 s)",
              file=sys.stderr, flush=True)
        _compile(compiler, path)
    return _bind(ctypes.CDLL(str(path)))


@functools.cache
def library() -> ctypes.CDLL | None:
    """The compiled kernels, built on first use; None (with one warning) if that is impossible."""
    try:
        return _load()
    except (RuntimeError, OSError, subprocess.SubprocessError) as error:
        warnings.warn(f"tokenmill: GGUF kernels unavailable ({error}); using dense float32 weights",
                      RuntimeWarning, stacklevel=3)
        return None


def available() -> bool:
    return library() is not None


def supports(ggml_type: int) -> bool:
    lib = library()
    return lib is not None and bool(lib.tm_supports(ggml_type))


def _threads() -> int:
    return max(1, torch.get_num_threads())


def _check_blocks(blocks: torch.Tensor, *others: torch.Tensor) -> None:
    """The C code reads raw CPU pointers: anything else would be a crash, so it is an error here."""
    for tensor in (blocks, *others):
        if tensor.device.type != "cpu":
            raise RuntimeError(f"the GGUF kernels run on the CPU, got a tensor on {tensor.device}; call "
                               "model.dequantize() (or move the whole model, which does it) first")
    if blocks.dtype != torch.uint8 or blocks.dim() != 2 or not blocks.is_contiguous():
        raise ValueError(f"GGUF blocks must be a contiguous uint8 [rows, row_bytes] tensor, got "
                         f"{blocks.dtype} {tuple(blocks.shape)}")


def matmul(x: torch.Tensor, blocks: torch.Tensor, ggml_type: int, in_features: int) -> torch.Tensor:
    """x [..., in_features] float32 (CPU) times the block-stored W [out, in]^T -> [..., out] float32."""
    _check_blocks(blocks, x)
    if x.dtype != torch.float32:
        raise ValueError(f"the GGUF kernels take float32 activations, got {x.dtype}")
    x2d = x.reshape(-1, in_features)
    if not x2d.is_contiguous():
        x2d = x2d.contiguous()
    rows = blocks.shape[0]
    out = torch.empty(x2d.shape[0], rows, dtype=torch.float32)
    status = library().tm_matmul(blocks.data_ptr(), blocks.shape[1], ggml_type, rows, in_features,
                                x2d.data_ptr(), x2d.shape[0], out.data_ptr(), _threads())
    if status:
        raise RuntimeError(f"GGUF matmul failed (status {status}) for ggml type {ggml_type}")
    return out.view(*x.shape[:-1], rows)


def dequantize_rows(blocks: torch.Tensor, ggml_type: int, in_features: int,
                    ids: torch.Tensor | None = None) -> torch.Tensor:
    """Rows `ids` (all rows if None) of the block-stored matrix, dequantized to float32 [n, in_features]."""
    _check_blocks(blocks)
    if ids is not None:
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= blocks.shape[0]):
            raise IndexError(f"row ids must be in [0, {blocks.shape[0]}), got {int(ids.min())}..{int(ids.max())}")
        ids = ids.reshape(-1).to(torch.int64).contiguous()
    count = blocks.shape[0] if ids is None else ids.numel()
    out = torch.empty(count, in_features, dtype=torch.float32)
    status = library().tm_dequant_rows(blocks.data_ptr(), blocks.shape[1], ggml_type, in_features,
                                      None if ids is None else ids.data_ptr(), count, out.data_ptr(), _threads())
    if status:
        raise RuntimeError(f"GGUF dequantization failed (status {status}) for ggml type {ggml_type}")
    return out


def rms_norm_applies(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """True where `rms_norm` below can serve: float32 CPU inference on a contiguous last dimension."""
    return (x.dtype == torch.float32 and weight.dtype == torch.float32 and x.device.type == "cpu"
            and weight.device.type == "cpu" and x.is_contiguous() and weight.is_contiguous()
            and x.shape[-1] == weight.shape[0] and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
            and library() is not None)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, unit_offset: bool = False) -> torch.Tensor:
    """x / rms(x) * weight (or * (1 + weight)) over the last dimension; see rms_norm_applies."""
    dim = x.shape[-1]
    out = torch.empty_like(x)
    status = library().tm_rms_norm(x.data_ptr(), x.numel() // dim, dim, weight.data_ptr(), eps, int(unit_offset),
                                   out.data_ptr(), _threads())
    if status:
        raise RuntimeError(f"rms_norm kernel failed (status {status}) for shape {tuple(x.shape)}")
    return out
