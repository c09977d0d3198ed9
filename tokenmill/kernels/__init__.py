"""Native CPU kernels: float32 matmuls over GGUF block-quantized weights (see gguf_blocks.c) and the row-wise
float32 ops of the decode step whose ATen dispatch costs more than their arithmetic (elementwise.c), and
attention read straight from the cache, decode steps and causal prefills alike (attention.c).

The C source is compiled once per machine (and per TOKENMILL_KERNEL_ISA) with the system C compiler and
loaded with ctypes (build.py); no build step at install time and no compiler headers from torch. It links
libgomp by soname, so it shares the OpenMP runtime torch has already loaded. If no compiler is present (or
TOKENMILL_KERNELS=0), `available()` is False and callers keep dense float32 weights instead.
"""

from __future__ import annotations

import ctypes
import functools
import subprocess
import warnings
from pathlib import Path

import torch

from . import build


@functools.cache
def library() -> ctypes.CDLL | None:
    """The compiled kernels, built on first use for TOKENMILL_KERNEL_ISA (build.py); None (with one warning)
    if that is impossible. Call it at model load to compile there rather than in the first forward."""
    try:
        return build.load()
    except (RuntimeError, OSError, subprocess.SubprocessError) as error:
        warnings.warn(f"tokenmill: GGUF kernels unavailable ({error}); using dense float32 weights",
                      RuntimeWarning, stacklevel=3)
        return None


def build_isa() -> str | None:
    """What the loaded kernels were compiled for ("avx512", "avx2" or "scalar"), None without kernels."""
    lib = library()
    return None if lib is None else lib.tm_build_isa().decode()


def build_id() -> str | None:
    """The loaded library's file name stem (its hash covers sources, flags, compiler and CPU), None without
    kernels: what a measurement of the kernels (execution/calibration.py) is valid for."""
    lib = library()
    return None if lib is None else Path(lib._name).stem


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
    # the checks every call needs, cheapest first: this runs ~120 times per decode step
    if not (x.dtype is torch.float32 and x.is_cpu and blocks.is_cpu and blocks.dtype is torch.uint8
            and blocks.dim() == 2 and blocks.is_contiguous()):
        _check_blocks(blocks, x)
        if x.dtype != torch.float32:
            raise ValueError(f"the GGUF kernels take float32 activations, got {x.dtype}")
    if not x.is_contiguous():
        x = x.contiguous()
    if x.shape[-1] != in_features:
        raise ValueError(f"the input's last dimension is {x.shape[-1]}, the weight takes {in_features}")
    rows = blocks.shape[0]
    out = torch.empty(x.shape[:-1] + (rows,), dtype=torch.float32)
    status = library().tm_matmul(blocks.data_ptr(), blocks.shape[1], ggml_type, rows, in_features, x.data_ptr(),
                                 x.numel() // in_features, out.data_ptr(), _threads())
    if status:
        raise RuntimeError(f"GGUF matmul failed (status {status}) for ggml type {ggml_type}")
    return out


def dequantize_rows(blocks: torch.Tensor, ggml_type: int, in_features: int,
                    ids: torch.Tensor | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
    """Rows `ids` (all rows if None) of the block-stored matrix, dequantized to float32 [n, in_features]
    (written into `out`, a contiguous float32 tensor of that shape, if given)."""
    _check_blocks(blocks)
    if ids is not None:
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= blocks.shape[0]):
            raise IndexError(f"row ids must be in [0, {blocks.shape[0]}), got {int(ids.min())}..{int(ids.max())}")
        ids = ids.reshape(-1).to(torch.int64).contiguous()
    count = blocks.shape[0] if ids is None else ids.numel()
    if out is None:
        out = torch.empty(count, in_features, dtype=torch.float32)
    elif out.shape != (count, in_features) or out.dtype != torch.float32 or not out.is_contiguous():
        raise ValueError(f"out must be a contiguous float32 [{count}, {in_features}] tensor")
    status = library().tm_dequant_rows(blocks.data_ptr(), blocks.shape[1], ggml_type, in_features,
                                      None if ids is None else ids.data_ptr(), count, out.data_ptr(), _threads())
    if status:
        raise RuntimeError(f"GGUF dequantization failed (status {status}) for ggml type {ggml_type}")
    return out


def serves_float32(*tensors: torch.Tensor) -> bool:
    """float32 CPU tensors outside autograd, with the kernels built."""
    return (all(t.dtype is torch.float32 and t.is_cpu for t in tensors)
            and not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors)) and library() is not None)


def rms_norm_applies(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """True where `rms_norm` below can serve: float32 CPU inference on a contiguous last dimension."""
    return (x.shape[-1] == weight.shape[0] and x.is_contiguous() and weight.is_contiguous()
            and serves_float32(x, weight))


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, unit_offset: bool = False) -> torch.Tensor:
    """x / rms(x) * weight (or * (1 + weight)) over the last dimension; see rms_norm_applies."""
    dim = x.shape[-1]
    out = torch.empty_like(x)
    status = library().tm_rms_norm(x.data_ptr(), x.numel() // dim, dim, weight.data_ptr(), eps, int(unit_offset),
                                   out.data_ptr(), _threads())
    if status:
        raise RuntimeError(f"rms_norm kernel failed (status {status}) for shape {tuple(x.shape)}")
    return out


def rotary_applies(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> bool:
    """Where `rotary` serves: x [batch, heads, seq, dim] rotated over its whole head, float32 on the CPU."""
    return (x.dim() == 4 and cos.dim() == 4 and cos.shape[-1] == x.shape[-1] and x.shape[-1] % 2 == 0
            and cos.shape == signed_sin.shape and cos.stride() == signed_sin.stride() and cos.shape[1] == 1
            and cos.shape[0] in (1, x.shape[0]) and cos.shape[2] == x.shape[2] and x.stride(-1) == 1
            and cos.stride(-1) == 1 and serves_float32(x, cos, signed_sin))


def rotary(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """x * cos + x.roll(dim // 2, -1) * signed_sin, bit for bit, in one pass; see rotary_applies."""
    batch, heads, seq, dim = x.shape
    out = torch.empty((batch, heads, seq, dim), dtype=torch.float32)
    x_strides = (ctypes.c_int64 * 3)(x.stride(0), x.stride(1), x.stride(2))
    table_batch_stride = cos.stride(0) if cos.shape[0] > 1 else 0
    status = library().tm_rotary(x.data_ptr(), x_strides, batch, heads, seq, dim, cos.data_ptr(), signed_sin.data_ptr(),
                                 table_batch_stride, cos.stride(2), out.data_ptr(), _threads())
    if status:
        raise RuntimeError(f"rotary kernel failed (status {status}) for shape {tuple(x.shape)}")
    return out


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up for a contiguous float32 [..., 2 * inter] = [gate | up] (a fused projection's output)."""
    inter = gate_up.shape[-1] // 2
    out = torch.empty(gate_up.shape[:-1] + (inter,), dtype=torch.float32)
    status = library().tm_silu_mul(gate_up.data_ptr(), gate_up.numel() // (2 * inter), inter, out.data_ptr(),
                                   _threads())
    if status:
        raise RuntimeError(f"silu_mul kernel failed (status {status}) for shape {tuple(gate_up.shape)}")
    return out


def argmax_applies(scores: torch.Tensor) -> bool:
    """Where `argmax` below serves: float32 CPU scores with a non-empty last dimension."""
    return scores.dim() > 0 and scores.shape[-1] > 0 and serves_float32(scores)


def argmax(scores: torch.Tensor) -> torch.Tensor:
    """scores.argmax(dim=-1), the same indices (first on ties, NaN largest) in one vectorized pass (torch's CPU
    argmax takes ~0.4 ms over 8 x 49k logits, this ~0.03); see argmax_applies."""
    rows = scores.reshape(-1, scores.shape[-1])
    if not rows.is_contiguous():
        rows = rows.contiguous()
    out = torch.empty(rows.shape[0], dtype=torch.int64)
    if library().tm_argmax_rows(rows.data_ptr(), rows.shape[0], rows.shape[1], out.data_ptr(), _threads()):
        raise RuntimeError(f"argmax kernel failed for shape {tuple(scores.shape)}")
    return out.view(scores.shape[:-1])


def attention_applies(q: torch.Tensor, keys: torch.Tensor, softcap: float | None) -> bool:
    """True where `attention` below can serve: float32 CPU inference, head_dim a multiple of 16 up to 256."""
    head_dim = q.shape[-1]
    return (softcap is None and head_dim % 16 == 0 and head_dim <= 256
            and q.stride(-1) == 1 and keys.stride(-1) == 1 and serves_float32(q, keys))


def attention(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, allowed: torch.Tensor | None,
              is_causal: bool, scale: float, slots: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(scale * q k^T) v with grouped kv heads, returned as [batch, queries, heads * head_dim].

    q [batch, heads, queries, dim]; keys/values [batch, kv_heads, columns, dim] (any strides, last one 1), or
    with `slots` [batch, columns]: pool tensors [slots, kv_heads, dim] read at those rows. allowed: bool
    broadcastable to [batch, 1, queries, columns], or None (all visible, or causal if is_causal)."""
    batch, heads, queries, dim = q.shape
    if keys.dtype != torch.float32 or keys.stride(-1) != 1:  # a cache stored in another dtype: read a float copy
        keys = keys.float().contiguous()
    if values.dtype != torch.float32 or values.stride(-1) != 1:
        values = values.float().contiguous()
    if slots is None:
        kv_heads, columns = keys.shape[1], keys.shape[2]
        k_strides, v_strides = keys.stride()[:3], values.stride()[:3]
    else:
        slots = slots.to(torch.int64).contiguous()
        kv_heads, columns = keys.shape[1], slots.shape[1]
        k_strides, v_strides = (0, keys.stride(1), keys.stride(0)), (0, values.stride(1), values.stride(0))
    mask_strides = None
    if allowed is not None:
        allowed = allowed.expand(batch, 1, queries, columns)
        if allowed.dtype != torch.bool:
            raise ValueError(f"attention masks must be boolean, got {allowed.dtype}")
        mask_strides = (ctypes.c_int64 * 3)(allowed.stride(0), allowed.stride(2), allowed.stride(3))
    out = torch.empty(batch, queries, heads * dim, dtype=torch.float32)
    status = library().tm_attention(
        q.data_ptr(), q.stride(0), q.stride(1), q.stride(2), keys.data_ptr(), values.data_ptr(),
        (ctypes.c_int64 * 3)(*k_strides), (ctypes.c_int64 * 3)(*v_strides),
        None if slots is None else slots.data_ptr(), None if allowed is None else allowed.data_ptr(), mask_strides,
        int(is_causal), batch, heads, kv_heads, queries, columns, dim, scale, out.data_ptr(), _threads())
    if status:
        raise RuntimeError(f"attention kernel failed (status {status}) for q {tuple(q.shape)}, {columns} columns")
    return out


def int8_supports(ggml_type: int) -> bool:
    """True where `matmul_int8` (precision="fast") serves this weight type: Q4_0, Q4_1, Q8_0 in any build, and
    the types only the packed kernel takes (Q4_K, Q6_K) where this build has it (int8_packs)."""
    lib = library()
    return lib is not None and bool(lib.tm_int8_supports(ggml_type) or lib.tm_int8_packs(ggml_type))


def quantize_int8(x: torch.Tensor, digits: int = 2) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor,
                                                                torch.Tensor]:
    """x [..., k] float32 (k a multiple of 32) -> (int8 q [..., k], the second digits q_low [..., k] or None for
    digits=1, float32 scales and int32 sums of the block integers, each [..., k / 32]). Per 32-block
    d = amax / 127, q = nearbyint(x * (1 / d)) in float32 (0 for an all-zero block); digits=2 adds
    q_low = nearbyint((x * (1 / d) - q) * 128), the block integers become 128 q + q_low and the scale d / 128."""
    x = x.contiguous()
    k = x.shape[-1]
    if x.dtype != torch.float32 or k % 32:
        raise ValueError(f"int8 activations need float32 with a last dimension divisible by 32, got {x.dtype} {k}")
    if digits not in (1, 2):
        raise ValueError(f"int8 activations have 1 or 2 digits, got {digits}")
    q = torch.empty(x.shape, dtype=torch.int8)
    q_low = torch.empty(x.shape, dtype=torch.int8) if digits == 2 else None
    scales = torch.empty(x.shape[:-1] + (k // 32,), dtype=torch.float32)
    sums = torch.empty(scales.shape, dtype=torch.int32)
    library().tm_quantize_int8(x.data_ptr(), x.numel() // k, k, q.data_ptr(), None if q_low is None else
                               q_low.data_ptr(), scales.data_ptr(), sums.data_ptr())
    return q, q_low, scales, sums


_INT8_TYPES_SEEN: set[int] = set()  # types int8_supports confirmed: asked once, not once per call


def int8_packs(ggml_type: int) -> bool:
    """True where this build multiplies the type from weights repacked by `pack_int8` (AVX-512 VNNI)."""
    lib = library()
    return lib is not None and bool(lib.tm_int8_packs(ggml_type))


def pack_int8(blocks: torch.Tensor, ggml_type: int, in_features: int) -> torch.Tensor:
    """The block weights [rows, row_bytes] in gguf_int8_packed.c's layout (rows in groups of 16, each block's
    values interleaved across the group's rows): a flat uint8 tensor of the same size, rounded up to 16 rows,
    for `matmul_int8(..., packed=...)`."""
    _check_blocks(blocks)
    if not int8_packs(ggml_type):
        raise ValueError(f"this kernel build has no packed int8 layout for ggml type {ggml_type}")
    rows = blocks.shape[0]
    size = (rows + 15) // 16 * (in_features // 32) * library().tm_int8_group_block_bytes(ggml_type)
    packed = torch.empty(size, dtype=torch.uint8)
    if library().tm_int8_pack(blocks.data_ptr(), blocks.shape[1], ggml_type, rows, in_features, packed.data_ptr(),
                              _threads()):
        raise ValueError(f"cannot pack a [{rows}, {blocks.shape[1]}] byte tensor of ggml type {ggml_type} with "
                         f"{in_features} columns")
    return packed


def matmul_int8(x: torch.Tensor, blocks: torch.Tensor, ggml_type: int, in_features: int,
                digits: int = 2, packed: torch.Tensor | None = None) -> torch.Tensor:
    """precision="fast": like `matmul`, with x quantized per 32-block to `digits` int8 digits (quantize_int8) and
    integer block dot products; from `packed` (pack_int8 of these blocks) where given, the faster kernel."""
    # the checks every call needs, cheapest first (as `matmul`'s): a decode step makes ~200 of these calls
    if not (x.dtype is torch.float32 and x.is_cpu and blocks.is_cpu and blocks.dtype is torch.uint8
            and blocks.dim() == 2 and blocks.is_contiguous()):
        _check_blocks(blocks, x)
    if x.shape[-1] != in_features:
        raise ValueError(f"the input's last dimension is {x.shape[-1]}, the weight takes {in_features}")
    if ggml_type not in _INT8_TYPES_SEEN and not int8_supports(ggml_type):
        raise ValueError(f"precision='fast' has no integer kernel for ggml type {ggml_type}")
    _INT8_TYPES_SEEN.add(ggml_type)
    rows = blocks.shape[0]
    if packed is not None:
        if not x.is_contiguous():
            x = x.contiguous()
        out = torch.empty(x.shape[:-1] + (rows,), dtype=torch.float32)
        status = library().tm_matmul_int8_packed(packed.data_ptr(), ggml_type, rows, in_features, x.data_ptr(),
                                                 x.numel() // in_features, digits, out.data_ptr(), _threads())
        if status:
            raise RuntimeError(f"packed int8 matmul failed (status {status}) for ggml type {ggml_type}")
        return out
    if not library().tm_int8_supports(ggml_type):
        raise ValueError(f"ggml type {ggml_type} has only the packed integer kernel: pass packed=pack_int8(...)")
    q, q_low, scales, sums = quantize_int8(x, digits)
    out = torch.empty(x.shape[:-1] + (rows,), dtype=torch.float32)
    status = library().tm_matmul_int8(blocks.data_ptr(), blocks.shape[1], ggml_type, rows, in_features, q.data_ptr(),
                                      None if q_low is None else q_low.data_ptr(), scales.data_ptr(),
                                      sums.data_ptr(), x.numel() // in_features, out.data_ptr(), _threads())
    if status:
        raise RuntimeError(f"int8 matmul failed (status {status}) for ggml type {ggml_type}")
    return out
