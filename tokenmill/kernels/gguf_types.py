"""The GGUF tensor types as gguf_types.h lists them (the one table the C kernels are built from), parsed at
import: the id, the block size in bytes and in elements, and which kernels take the type."""

from __future__ import annotations

import re
from pathlib import Path
from typing import NamedTuple

HEADER = Path(__file__).with_name("gguf_types.h")
_ROW = re.compile(r"^\s*X\((\w+),\s*(\d+),\s*(\d+),\s*(\d+),\s*(NONE|BLOCKS|BLOCKS_AVX512)\)\s*\\?\s*$")


class BlockType(NamedTuple):
    name: str
    type_id: int
    block_bytes: int
    block_elements: int
    block_kernel: bool  # gguf_blocks.c dequantizes it and multiplies by it (any ISA)
    avx512_kernel: bool  # gguf_avx512.c has a register-tiled path for it (AVX-512 builds only)


def parse(text: str) -> dict[int, BlockType]:
    """{type id: BlockType} from the X(...) rows of the header's text; an unreadable table is an error."""
    types: dict[int, BlockType] = {}
    for line in text.splitlines():
        match = _ROW.match(line)
        if match is None:
            if line.strip().startswith("X("):
                raise ValueError(f"gguf_types.h: cannot parse the row {line.strip()!r}")
            continue
        name, type_id, block_bytes, block_elements, kernels = match.groups()
        if int(type_id) in types:
            raise ValueError(f"gguf_types.h: type id {type_id} listed twice")
        types[int(type_id)] = BlockType(name, int(type_id), int(block_bytes), int(block_elements),
                                        kernels != "NONE", kernels == "BLOCKS_AVX512")
    if not types:
        raise ValueError("gguf_types.h: no X(...) rows found")
    return types


TYPES: dict[int, BlockType] = parse(HEADER.read_text())
BY_NAME: dict[str, BlockType] = {block_type.name: block_type for block_type in TYPES.values()}

# precision="fast": the block types whose layers switch to int8 activations: those gguf_int8.c (any build) or
# gguf_int8_packed.c (AVX-512 VNNI builds; Q4_K and Q6_K only there) multiplies, their results held to the exact
# integer arithmetic by tests/kernels/test_gguf_int8.py. A type joins only with a kernel both exact against its
# integer arithmetic and faster than its float32 kernel; other types' layers (and Q4_K / Q6_K layers in a build
# without the packed kernel) stay exact in fast mode.
INT8_KERNEL_TYPES: frozenset[str] = frozenset({"Q4_0", "Q4_1", "Q8_0", "Q4_K", "Q6_K"})


def has_int8_kernel(type_id: int) -> bool:
    """Whether layers of this block type switch to int8 activations under precision="fast"."""
    block_type = TYPES.get(type_id)
    return block_type is not None and block_type.name in INT8_KERNEL_TYPES
