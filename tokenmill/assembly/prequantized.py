"""Pre-quantized GPTQ and AWQ checkpoints → the block types the C kernels run, exactly, or dense float.

Both formats hold integers q of `bits` bits packed into int32 words (lowest bits first, p = 32 / bits per word)
and, per group of input features and per output feature, a float16 scale s and an integer zero z: the weight
is s * (q - z).
- GPTQ: qweight [in / p, out] packs consecutive input features; qzeros [groups, out / p] packs output features;
  scales [groups, out]; g_idx [in] names each input feature's group (with desc_act the groups follow the
  activation order, not the feature order). checkpoint_format "gptq" (AutoGPTQ's) stores z - 1, read back + 1;
  "gptq_v2" (gptqmodel's) stores z.
- AWQ (GEMM version): qweight [in, out / 8] and qzeros [groups, out / 8] pack output features in the order
  0, 2, 4, 6, 1, 3, 5, 7 within each word; scales [groups, out]; group g holds input features g*size..+size.

Repacking: s * (q - z) = d * (code - offset) with d = s (a float16 already) and code = q - z + offset. Where every
block of 32 input features lies in one group (with desc_act: once the features are sorted by group, the order a
PermutedWeight keeps so that layers/permuted_linear.py gathers the activations to match), the blocks reproduce
the weight exactly: Q4_0 (offset 8) when
every q - z is in [-8, 7] (symmetric 4-bit: z = 8), Q5_0 (offset 16) when in [-16, 15] (any 4-bit zero),
Q8_0 (offset 0) when in [-128, 127] (symmetric 8-bit). Q4_1 is not used: its minimum -s*z is not exact in
float16 (an 11-bit significand times a zero of up to 5 bits). Any other layer (asymmetric 8-bit, a group whose
size is not a multiple of 32, an input width not a multiple of 32) is dequantized at load to a dense float weight:
the same values, at float speed and memory.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import CheckpointError
from ..kernels.gguf_types import BY_NAME
from ..layers.permuted_linear import PermutedWeight
from ..layers.quantized_linear import QuantizedWeight
from ..loading.safetensors import read_folder_weights
from .quantization_config import QuantizationConfigError
from .quantize import BLOCK, pack_blocks

METHODS = ("gptq", "awq")
AWQ_PACK_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)  # word position i holds output feature AWQ_PACK_ORDER[i] of its 8
PACKED_NAMES = ("qweight", "qzeros", "scales", "g_idx")
# (block type, code offset, the q - z range it holds exactly), tried in order: the smallest that fits
BLOCK_CHOICES = (("Q4_0", 8, -8, 7), ("Q5_0", 16, -16, 15), ("Q8_0", 0, -128, 127))


@dataclass(frozen=True)
class PackedFormat:
    """What a checkpoint's quantization_config says about its packed layers."""

    method: str  # "gptq" or "awq"
    bits: int
    group_size: int  # -1: one group over all input features
    zero_offset: int  # added to each stored zero: 1 for AutoGPTQ's format, else 0


def packed_format(quantization_config: dict | None) -> PackedFormat | None:
    """The format of a checkpoint's config.json `quantization_config` (None: there is none); a method other
    than GPTQ or AWQ is an error naming those."""
    if not isinstance(quantization_config, dict):
        return None
    method = str(quantization_config.get("quant_method", "")).lower()
    if not method:
        return None
    if method not in METHODS:
        raise QuantizationConfigError(f"a checkpoint quantized with quant_method {method!r}: tokenmill loads "
                                      f"pre-quantized {' and '.join(METHODS)} checkpoints (and quantizes float "
                                      f"folders at load)")
    bits = quantization_config.get("bits", quantization_config.get("w_bit"))
    if bits not in ((4, 8) if method == "gptq" else (4,)):
        raise QuantizationConfigError(f"{method} checkpoint with bits={bits!r}: tokenmill loads "
                                      f"{'4- and 8-bit' if method == 'gptq' else '4-bit'} {method} weights")
    version = str(quantization_config.get("version", "gemm")).lower()
    if method == "awq" and version != "gemm":
        raise QuantizationConfigError(f"AWQ version {version!r}: tokenmill reads the GEMM layout only")
    group_size = quantization_config.get("group_size", quantization_config.get("q_group_size", 128))
    if not isinstance(group_size, int) or not (group_size == -1 or group_size > 0):
        raise QuantizationConfigError(f"{method} group_size must be a positive integer or -1, got {group_size!r}")
    v1 = method == "gptq" and quantization_config.get("checkpoint_format", "gptq") == "gptq"
    return PackedFormat(method, bits, group_size, 1 if v1 else 0)


def _unpack_rows(words: torch.Tensor, bits: int) -> torch.Tensor:
    """int32 [r, c] → [r * p, c]: word (i, j) holds rows i*p .. i*p + p - 1 of column j, lowest bits first."""
    shifts = torch.arange(0, 32, bits, dtype=torch.int32)
    values = (words.to(torch.int32)[:, None, :] >> shifts[None, :, None]) & ((1 << bits) - 1)
    return values.reshape(-1, words.shape[1])


def _unpack_columns(words: torch.Tensor, bits: int, order: tuple[int, ...] | None = None) -> torch.Tensor:
    """int32 [r, c] → [r, c * p]: word (i, j) holds columns j*p .. j*p + p - 1 (in `order` if given)."""
    shifts = torch.arange(0, 32, bits, dtype=torch.int32)
    values = (words.to(torch.int32)[:, :, None] >> shifts) & ((1 << bits) - 1)
    if order is not None:  # position i holds feature order[i]: put each feature back in its place
        values = values[:, :, torch.tensor(order).argsort()]
    return values.reshape(words.shape[0], -1)


def _layer_tensors(weights: dict, prefix: str, method: str, source: Path) -> dict[str, torch.Tensor]:
    needed = ("qweight", "qzeros", "scales")
    missing = [f"{prefix}.{name}" for name in needed if f"{prefix}.{name}" not in weights]
    if missing:
        raise CheckpointError(source, f"{method} layer {prefix} lacks {', '.join(missing)}")
    return {name: weights[f"{prefix}.{name}"] for name in PACKED_NAMES if f"{prefix}.{name}" in weights}


def _layer_integers(fmt: PackedFormat, tensors: dict, prefix: str, source: Path):
    """(q - z) as int32 [in, out], scales float32 [groups, out], each input feature's group (int64 [in])."""
    pack = 32 // fmt.bits
    if fmt.method == "gptq":
        codes = _unpack_rows(tensors["qweight"], fmt.bits)
        zeros = _unpack_columns(tensors["qzeros"], fmt.bits) + fmt.zero_offset
    else:
        codes = _unpack_columns(tensors["qweight"], fmt.bits, AWQ_PACK_ORDER)
        zeros = _unpack_columns(tensors["qzeros"], fmt.bits, AWQ_PACK_ORDER)
    scales = tensors["scales"].float()
    in_features, out_features = codes.shape
    group_size = in_features if fmt.group_size == -1 else fmt.group_size
    if in_features % group_size:
        raise CheckpointError(source, f"{prefix}: group_size {group_size} does not divide its {in_features} "
                                      f"input features")
    groups = in_features // group_size
    if scales.shape != (groups, out_features) or zeros.shape != (groups, out_features):
        raise CheckpointError(source, f"{prefix}: scales {tuple(scales.shape)} and qzeros "
                                      f"{tuple(tensors['qzeros'].shape)} (x{pack} packed) do not match "
                                      f"{groups} groups of {out_features} outputs")
    group_of = tensors.get("g_idx")
    group_of = (torch.arange(in_features) // group_size if group_of is None else group_of.to(torch.int64))
    if group_of.shape != (in_features,) or group_of.min() < 0 or group_of.max() >= groups:
        raise CheckpointError(source, f"{prefix}.g_idx must name one of {groups} groups for each of "
                                      f"{in_features} input features")
    return codes - zeros[group_of], scales, group_of


def _aligned(group_of: torch.Tensor) -> bool:
    """Whether every block of 32 input features lies in one group."""
    if group_of.numel() % BLOCK:
        return False
    blocks = group_of.view(-1, BLOCK)
    return bool((blocks == blocks[:, :1]).all())


def input_order(group_of: torch.Tensor) -> torch.Tensor | None:
    """The order of input features that makes every block of 32 lie in one group: the stored order where it
    does already, else the features sorted by group (act-order's groups made contiguous); None where no order
    does (a group whose size is not a multiple of 32)."""
    if _aligned(group_of):
        return torch.arange(group_of.numel())
    order = torch.sort(group_of, stable=True).indices
    return order if _aligned(group_of[order]) else None


def _block_choice(offsets: torch.Tensor, scales: torch.Tensor):
    """The first of BLOCK_CHOICES that holds this layer's integers and scales exactly, or None."""
    if not bool((scales.half().float() == scales).all()):
        return None  # scales stored wider than float16: a block's float16 scale would round them
    low, high = int(offsets.min()), int(offsets.max())
    return next((choice for choice in BLOCK_CHOICES if choice[2] <= low and high <= choice[3]), None)


def _repacked(offsets: torch.Tensor, scales: torch.Tensor, group_of: torch.Tensor, choice,
              order: torch.Tensor) -> QuantizedWeight:
    """Blocks of the input features taken in `order` (a PermutedWeight unless that is the stored order)."""
    type_name, code_offset = choice[:2]
    permuted = not torch.equal(order, torch.arange(order.numel()))
    if permuted:
        offsets, group_of = offsets[order], group_of[order]
    out_features = offsets.shape[1]
    d = scales[group_of[::BLOCK]].T.reshape(-1, 1)  # [out * in / 32, 1]: each block's one scale
    codes = (offsets.T + code_offset).reshape(-1, BLOCK)
    blocks = pack_blocks(type_name, d, codes).view(out_features, -1).contiguous()
    type_id = BY_NAME[type_name].type_id
    if permuted:
        return PermutedWeight(blocks, type_id, offsets.shape[0], order)
    return QuantizedWeight(blocks, type_id, offsets.shape[0])


def dequantized_weight(offsets: torch.Tensor, scales: torch.Tensor, group_of: torch.Tensor) -> torch.Tensor:
    """s * (q - z) as float32 [out, in] (exact: a float16 times an integer below 2**9)."""
    return (scales[group_of] * offsets.float()).T.contiguous()


def unpack_checkpoint(weights: dict, fmt: PackedFormat, source: Path, dtype: torch.dtype,
                      blocks: bool) -> tuple[dict, dict[str, int]]:
    """The packed layers of `weights` as `<prefix>.weight`: block weights where exact and `blocks`, else dense
    float in `dtype`; other float tensors converted to `dtype`. Also returns how many layers became each kind."""
    prefixes = sorted({name.rpartition(".")[0] for name in weights if name.endswith(".qweight")})
    if not prefixes:
        raise CheckpointError(source, f"quant_method {fmt.method!r} but no tensor ends in .qweight")
    packed = {f"{prefix}.{name}" for prefix in prefixes for name in PACKED_NAMES}
    out = {name: (t.to(dtype) if t.is_floating_point() else t) for name, t in weights.items() if name not in packed}
    kinds: dict[str, int] = {}
    for prefix in prefixes:
        tensors = _layer_tensors(weights, prefix, fmt.method, source)
        offsets, scales, group_of = _layer_integers(fmt, tensors, prefix, source)
        order = input_order(group_of) if blocks else None
        choice = _block_choice(offsets, scales) if order is not None else None
        if choice is None:
            out[f"{prefix}.weight"] = dequantized_weight(offsets, scales, group_of).to(dtype)
        else:
            out[f"{prefix}.weight"] = _repacked(offsets, scales, group_of, choice, order)
        kind = "dense" if choice is None else choice[0]
        kinds[kind] = kinds.get(kind, 0) + 1
    return out, kinds


def read_prequantized(folder: Path, fmt: PackedFormat, policy, allow_pickle: bool = False,
                      progress: bool = True) -> dict:
    """A GPTQ / AWQ folder's weights for build_model, with one warning when any layer runs dense."""
    stored = read_folder_weights(folder, None, allow_pickle=allow_pickle, progress=progress)
    blocks = policy.weight_format == "gguf-blocks"
    weights, kinds = unpack_checkpoint(stored, fmt, folder, policy.dtype, blocks)
    dense = kinds.get("dense", 0)
    if dense:
        why = ("its groups cut the 32-weight blocks or its integers exceed the block types'" if blocks else
               f"this model runs as {policy.describe()}, without the block kernels")
        warnings.warn(f"tokenmill: {dense} of {sum(kinds.values())} {fmt.method} layers of {folder} are "
                      f"dequantized to dense float at load ({why}): the same values, at float speed and memory",
                      RuntimeWarning, stacklevel=3)
    return weights
