"""Compiling the C kernels for this machine and binding them with ctypes.

The target ISA comes from TOKENMILL_KERNEL_ISA: `native` (the default: whatever this CPU has), `avx512`,
`avx2` or `scalar` (portable C only). Forcing an older ISA is how the vector-free paths are tested on a
machine that has the newer one; target.h turns the compiler's target into the TM_AVX512 / TM_AVX2 guards and
`tm_build_isa()` reports what a library was built for. Each (sources, flags, compiler, CPU) has its own
cached library, so switching ISAs never reuses a wrong build. The ctypes signatures are generated from
exports.h, the header the C files are compiled against.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from .cpu import cpu_flags

HERE = Path(__file__).parent
SOURCES = [HERE / name for name in (
    "gguf_blocks.c", "gguf_avx512.c", "gguf_int8.c", "gguf_int8_packed.c", "elementwise.c", "attention.c")]
EXPORTS = HERE / "exports.h"
ISA_VARIABLE = "TOKENMILL_KERNEL_ISA"
ISAS = ("native", "avx512", "avx2", "scalar")
# no fp contraction: `d * q + m` must round twice, exactly as the torch dequantizers do
COMMON_FLAGS = ["-O3", "-ffp-contract=off", "-fopenmp", "-fPIC", "-shared", "-std=c11"]
X86_ISA_FLAGS = {
    "native": ["-march=native", "-mprefer-vector-width=512"],
    "avx512": ["-march=x86-64-v4", "-mprefer-vector-width=512"],  # AVX-512 F/BW/DQ/VL over AVX2, FMA, F16C
    "avx2": ["-march=x86-64-v3"],  # Haswell's AVX2, FMA, F16C and no AVX-512
    "scalar": ["-march=x86-64"],  # the x86-64 baseline: SSE2 only, none of the intrinsic paths
}
ARM_ISA_FLAGS = {"native": ["-march=native"], "scalar": ["-march=armv8-a"]}
# cpuinfo flags an x86 ISA needs at run time (a library built for more would die of SIGILL)
X86_ISA_NEEDS = {"avx512": ("avx512f", "avx512bw", "avx512dq", "avx512vl", "avx2", "fma", "f16c"),
                 "avx2": ("avx2", "fma", "f16c", "bmi2")}

_C_TYPES = {"int": ctypes.c_int, "int64_t": ctypes.c_int64, "float": ctypes.c_float}
_RETURN_TYPES = {"int": ctypes.c_int, "const char *": ctypes.c_char_p}


def requested_isa() -> str:
    """TOKENMILL_KERNEL_ISA, checked: an unknown name is an error, not a silent native build."""
    isa = os.environ.get(ISA_VARIABLE, "native").strip().lower() or "native"
    if isa not in ISAS:
        raise ValueError(f"{ISA_VARIABLE}={isa!r}: expected one of {', '.join(ISAS)}")
    return isa


def is_x86() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64")


def isa_flags(isa: str) -> list[str]:
    """The compiler flags for `isa` on this machine; ValueError where this CPU cannot run that build."""
    table = X86_ISA_FLAGS if is_x86() else ARM_ISA_FLAGS
    if isa not in table:
        raise ValueError(f"{ISA_VARIABLE}={isa}: not an ISA of {platform.machine()} (use one of {', '.join(table)})")
    flags = cpu_flags()
    missing = [flag for flag in X86_ISA_NEEDS.get(isa, ()) if flags and flag not in flags]
    if missing:
        raise ValueError(f"{ISA_VARIABLE}={isa}: this CPU lacks {', '.join(missing)}")
    return COMMON_FLAGS + table[isa]


def cache_dir() -> Path:
    root = os.environ.get("TOKENMILL_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "tokenmill")
    return Path(root) / "kernels"


def _cpu_signature() -> str:
    """What -march=native depends on: a binary built for one CPU may not run on another."""
    return f"{platform.machine()} {platform.processor()} {' '.join(sorted(cpu_flags()))}"


def library_path(compiler: str, flags: list[str]) -> Path:
    """The cached library for these sources (headers included), flags, compiler and CPU."""
    digest = hashlib.sha256()
    for source in sorted(SOURCES + list(HERE.glob("*.h"))):
        digest.update(source.name.encode() + source.read_bytes())
    for part in (" ".join(flags), compiler, _cpu_signature()):
        digest.update(part.encode())
    return cache_dir() / f"gguf_blocks-{digest.hexdigest()[:16]}.so"


def compile_library(compiler: str, flags: list[str], target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    # build beside the target and rename: concurrent processes never load a half-written file
    with tempfile.NamedTemporaryFile(dir=target.parent, suffix=".so", delete=False) as handle:
        partial = Path(handle.name)
    try:
        subprocess.run([compiler, *flags, *map(str, SOURCES), "-lm", "-o", str(partial)], check=True,
                       capture_output=True, text=True, timeout=120)
        os.replace(partial, target)
    except subprocess.CalledProcessError as error:
        raise RuntimeError(f"{compiler} failed: {error.stderr.strip()[-400:]}") from None
    finally:
        partial.unlink(missing_ok=True)


def signatures(text: str) -> dict[str, tuple[type, list[type]]]:
    """{function: (restype, argtypes)} from the prototypes in exports.h's text (any pointer is a void *)."""
    code = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    found = {}
    for match in re.finditer(r"(?m)^\s*(const char \*|int)\s*(tm_\w+)\s*\(([^)]*)\)\s*;", code):
        returns, name, params = match.groups()
        argtypes = []
        for param in (p.strip() for p in params.split(",")):
            if param in ("void", ""):
                continue
            if "*" in param:
                argtypes.append(ctypes.c_void_p)
                continue
            c_type = " ".join(param.split()[:-1])
            if c_type not in _C_TYPES:
                raise ValueError(f"exports.h: {name} takes a {c_type!r}, which build.py cannot bind")
            argtypes.append(_C_TYPES[c_type])
        found[name] = (_RETURN_TYPES[returns], argtypes)
    if not found:
        raise ValueError("exports.h: no tm_* prototypes found")
    return found


def bind(library: ctypes.CDLL) -> ctypes.CDLL:
    for name, (restype, argtypes) in signatures(EXPORTS.read_text()).items():
        function = getattr(library, name)
        function.restype, function.argtypes = restype, argtypes
    return library


def find_compiler() -> str:
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if compiler is None:
        raise RuntimeError("no C compiler (cc, gcc or clang) on PATH")
    return compiler


def load() -> ctypes.CDLL:
    """The kernels for TOKENMILL_KERNEL_ISA, compiled first if this machine has no cached build.

    RuntimeError/OSError where they cannot be built (the caller falls back to dense weights); ValueError for
    an ISA setting this machine cannot honour (a configuration error, not a fallback)."""
    if os.environ.get("TOKENMILL_KERNELS", "1") == "0":
        raise RuntimeError("disabled by TOKENMILL_KERNELS=0")
    if platform.machine().lower() not in ("x86_64", "amd64", "aarch64", "arm64"):
        raise RuntimeError(f"no kernels for {platform.machine()}")
    flags = isa_flags(requested_isa())
    compiler = find_compiler()
    path = library_path(compiler, flags)
    if not path.is_file():
        print(f"tokenmill: compiling the CPU kernels for this machine into {path.parent} (once; ~10 s)",
              file=sys.stderr, flush=True)
        compile_library(compiler, flags, path)
    return bind(ctypes.CDLL(str(path)))


def check_isa() -> int:
    """0 if TOKENMILL_KERNEL_ISA can be built and run on this CPU, else 3 after printing why (make
    test-portable skips such an ISA rather than failing on hardware that lacks it)."""
    isa = requested_isa()  # a misspelt name stays an error
    try:
        isa_flags(isa)
    except ValueError as error:
        print(f"skipping: {error}")
        return 3
    return 0
