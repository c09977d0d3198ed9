"""The CPU this process runs on, as /proc/cpuinfo describes it: model name and feature flags (what build.py
checks a forced ISA against, and what system.py reports)."""

from __future__ import annotations

import functools
import platform
from pathlib import Path

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
