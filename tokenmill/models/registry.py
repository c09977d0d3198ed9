"""model_type → architecture class, discovered from the `FAMILY` each models/<family>.py declares.

Adding a family is one file with a `FAMILY = Family(...)` line (plus its tests); nothing here changes. A family
that reads GGUF files also owns its llama.cpp architecture name there (`Family(..., gguf=ArchSpec(...))`), and
`gguf_architectures()` is the table the assembly hands to the GGUF reader.
"""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache

from ..errors import UnsupportedArchitectureError
from ..loading.gguf_arch import ArchSpec
from .family import Family

_SHARED_MODULES = {"base", "family", "registry", "resize"}  # the package's own machinery, not families


@cache
def families() -> dict[str, Family]:
    """Every family in this package, by model_type."""
    found: dict[str, Family] = {}
    for module_info in pkgutil.iter_modules(importlib.import_module(__package__).__path__):
        if module_info.name in _SHARED_MODULES:
            continue
        family = getattr(importlib.import_module(f"{__package__}.{module_info.name}"), "FAMILY", None)
        if family is None:
            continue
        if family.model_type in found:
            raise RuntimeError(f"model_type {family.model_type!r} is declared by two families")
        found[family.model_type] = family
    return found


def supported_model_types() -> list[str]:
    return sorted(families())


def model_class(model_type: str):
    family = families().get(model_type)
    if family is None:
        raise UnsupportedArchitectureError(model_type, families())
    return family.causal_lm


@cache
def gguf_architectures() -> dict[str, ArchSpec]:
    """GGUF `general.architecture` -> the spec of the one family that owns it."""
    found: dict[str, ArchSpec] = {}
    for family in families().values():
        if family.gguf is None:
            continue
        if family.gguf.name in found:
            raise RuntimeError(f"GGUF architecture {family.gguf.name!r} is declared by two families")
        found[family.gguf.name] = family.gguf
    return found
