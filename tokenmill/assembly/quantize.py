"""Float weights → block formats at load (quantize on load): the blocks the C kernels already multiply.

Each quantizer takes float32 blocks [n, 32] (the k-quants of assembly/quantize_k.py: [n, 256]) and returns
their bytes uint8 [n, block_bytes] in the layout loading/dequant.py reads. The legacy GGUF types follow ggml's
reference quantizers (ggml-quants.c, the same arithmetic as gguf-py's `quants.quantize`): Q8_0 (scale
absmax/127, rounding half away from zero), Q4_0 / Q5_0 (signed max / -8 or -16, truncation of x/d + 8.5 or
16.5), Q4_1 / Q5_1 (min and (max-min)/15 or /31, truncation of (x-min)/d + 0.5). NF4 / FP4 (tokenmill's own
types): each weight becomes the code-book entry whose interval between midpoints holds x/d (the nearest entry,
ties to the lower) for the block's float16 scale d, chosen by the least squared error among candidates around
the absmax (bitsandbytes' scale, still `quantize_code_book_absmax`), as llama.cpp's IQ4_NL quantizer searches.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import torch
from torch import nn

from ..kernels.gguf_types import BY_NAME
from ..layers.quantized_linear import QuantizedWeight
from ..loading.dequant import FP4_VALUES, NF4_VALUES
from ..loading.gguf import one_thread_per_op
from .quantize_mixture import MIXTURES, module_method
from .quantize_k import FALLBACK, quantize_q2_k, quantize_q3_k, quantize_q4_k, quantize_q5_k, quantize_q6_k

BLOCK = 32  # elements per block for every type made here
CHUNK_ELEMENTS = 1 << 18  # weights quantized at once: the float32 intermediates stay cache-sized
HALF_MAX = 65504.0  # the largest finite float16: a block scale past it cannot be stored
# NF4 / FP4: the block scales tried besides the absmax, as fractions of it (a smaller scale gives the bulk of the
# block finer steps and rounds its largest weights down to the table's ends)
SCALE_FACTORS = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75)


def _halves(values: torch.Tensor) -> torch.Tensor:
    """float32 [n, 1] → their float16 bytes, uint8 [n, 2]."""
    return values.half().view(torch.uint8)


def _inverse(d: torch.Tensor) -> torch.Tensor:
    """1/d, and 0 where d is 0 (an all-zero block), as ggml's `d ? 1.0f/d : 0.0f`."""
    return torch.where(d == 0, torch.zeros_like(d), 1 / d)


def _round_half_away(values: torch.Tensor) -> torch.Tensor:
    """C's roundf, exactly (torch.round rounds halves to even; floor(|v| + 0.5) can round up in the addition)."""
    magnitude = values.abs()
    whole = magnitude.floor()
    return (whole + (2 * (magnitude - whole)).floor()).copysign(values)


def _pack_nibbles(codes: torch.Tensor) -> torch.Tensor:
    """[n, 32] codes 0..15 (or their low 4 bits) → [n, 16] bytes: element j low, element j + 16 high."""
    codes = codes.to(torch.uint8) & 0x0F
    return codes[:, :16] | (codes[:, 16:] << 4)


def _high_bits(codes: torch.Tensor) -> torch.Tensor:
    """[n, 32] 5-bit codes → [n, 4] bytes: bit i of the little-endian word is bit 4 of element i."""
    bits = (codes.to(torch.int64) >> 4) & 1
    word = (bits << torch.arange(32, dtype=torch.int64)).sum(1, keepdim=True)
    return ((word >> torch.tensor([0, 8, 16, 24])) & 0xFF).to(torch.uint8)


def _signed_max(x: torch.Tensor) -> torch.Tensor:
    """The element of largest magnitude in each block, with its sign (the first such one)."""
    return x.gather(1, x.abs().argmax(1, keepdim=True))


def quantize_q8_0(x: torch.Tensor) -> torch.Tensor:
    d = x.abs().amax(1, keepdim=True) / 127
    codes = _round_half_away(x * _inverse(d)).to(torch.int8)
    return torch.cat((_halves(d), codes.view(torch.uint8)), 1)


def _symmetric_codes(x: torch.Tensor, levels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Q4_0 / Q5_0: d = signed max / -(levels / 2), code = trunc(x/d + levels/2 + 0.5) capped at levels - 1."""
    d = _signed_max(x) / -(levels // 2)
    codes = (x * _inverse(d) + (levels // 2 + 0.5)).trunc().clamp_(0, levels - 1)
    return d, codes


def _affine_codes(x: torch.Tensor, levels: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Q4_1 / Q5_1: m = min, d = (max - min) / (levels - 1), code = trunc((x - m)/d + 0.5) capped."""
    low, high = x.amin(1, keepdim=True), x.amax(1, keepdim=True)
    d = (high - low) / (levels - 1)
    codes = ((x - low) * _inverse(d) + 0.5).trunc().clamp_(0, levels - 1)
    return d, low, codes


def quantize_q4_0(x: torch.Tensor) -> torch.Tensor:
    d, codes = _symmetric_codes(x, 16)
    return torch.cat((_halves(d), _pack_nibbles(codes)), 1)


def quantize_q4_1(x: torch.Tensor) -> torch.Tensor:
    d, low, codes = _affine_codes(x, 16)
    return torch.cat((_halves(d), _halves(low), _pack_nibbles(codes)), 1)


def quantize_q5_0(x: torch.Tensor) -> torch.Tensor:
    d, codes = _symmetric_codes(x, 32)
    return torch.cat((_halves(d), _high_bits(codes), _pack_nibbles(codes)), 1)


def quantize_q5_1(x: torch.Tensor) -> torch.Tensor:
    d, low, codes = _affine_codes(x, 32)
    return torch.cat((_halves(d), _halves(low), _high_bits(codes), _pack_nibbles(codes)), 1)


def pack_blocks(type_name: str, d: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """Blocks [n, block_bytes] of Q4_0 (codes 0..15), Q5_0 (0..31) or Q8_0 (-128..127) from scales d [n, 1]
    (exact in float16) and codes [n, 32]: the layouts the quantizers above write, for codes made elsewhere."""
    if type_name == "Q8_0":
        return torch.cat((_halves(d), codes.to(torch.int8).view(torch.uint8)), 1)
    if type_name == "Q5_0":
        return torch.cat((_halves(d), _high_bits(codes), _pack_nibbles(codes)), 1)
    if type_name == "Q4_0":
        return torch.cat((_halves(d), _pack_nibbles(codes)), 1)
    raise ValueError(f"no block packer for {type_name}")


CODE_LUT_BINS = 4096  # bins of code_book_codes' lookup table over [-CODE_LUT_REACH, CODE_LUT_REACH)
CODE_LUT_REACH = 2.0
_code_luts: dict[tuple[float, ...], tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}


def _code_lut(values: tuple[float, ...]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The midpoints padded with -inf below and +inf above, and each bin's count of midpoints below its edge."""
    if values not in _code_luts:
        table = torch.tensor(values, dtype=torch.float32)
        midpoints = (table[1:] + table[:-1]) / 2
        edges = torch.linspace(-CODE_LUT_REACH, CODE_LUT_REACH, CODE_LUT_BINS + 1)[:-1]
        infinity = torch.tensor([float("inf")])
        _code_luts[values] = (torch.cat((-infinity, midpoints)), torch.cat((midpoints, infinity)),
                              torch.bucketize(edges, midpoints))
    return _code_luts[values]


def code_book_codes(scaled: torch.Tensor, values: tuple[float, ...]) -> torch.Tensor:
    """The index of the code-book entry for each scaled weight: how many midpoints between neighbouring
    entries lie strictly below it (the nearest entry; a weight on a midpoint takes the lower one). Read from a
    table of fine bins (about twice as fast as a binary search), then corrected by one comparison either way:
    exact as long as no bin holds two midpoints (the closest, FP4's, are 0.0026 apart; a bin is 0.001)."""
    below, above, lut = _code_lut(values)
    bins = ((scaled + CODE_LUT_REACH) * (CODE_LUT_BINS / (2 * CODE_LUT_REACH))).clamp_(0, CODE_LUT_BINS - 1)
    codes = lut[bins.long()]
    codes -= (scaled <= below[codes]).long()  # a midpoint in the bin above the value (or rounding)
    codes += (scaled > above[codes]).long()  # a midpoint in the value's bin, below it
    return codes


def _stored_scale(d: torch.Tensor) -> torch.Tensor:
    """d as its float16 block field holds it (in range: |d| <= the block's absmax / the smallest factor)."""
    return d.clamp(-HALF_MAX, HALF_MAX).half().float()


def _code_book_fit(x: torch.Tensor, d: torch.Tensor, values: tuple[float, ...]):
    """Codes (the nearest entries of x/d) and each block's squared error for stored scales d [n, 1]."""
    codes = code_book_codes(x / torch.where(d == 0, torch.ones_like(d), d), values)
    table = torch.tensor(values, dtype=torch.float32)
    return codes, (x - table[codes] * d).square().sum(1, keepdim=True)


def quantize_code_book_absmax(x: torch.Tensor, values: tuple[float, ...]) -> torch.Tensor:
    """NF4 / FP4 blocks as bitsandbytes scales them: d = float16(absmax of the block)."""
    d = _stored_scale(x.abs().amax(1, keepdim=True))
    return torch.cat((_halves(d), _pack_nibbles(_code_book_fit(x, d, values)[0])), 1)


def quantize_code_book_searched(x: torch.Tensor, values: tuple[float, ...]) -> torch.Tensor:
    """NF4 / FP4 blocks whose scale minimises the block's squared error among candidates: the absmax, the
    absmax times each SCALE_FACTORS entry, each with either sign (NF4 is not symmetric: a negative scale
    mirrors it), then the least-squares scale of the best candidate's codes. Each weight is the
    nearest entry of x/d for the chosen d; no block ends worse than with the absmax scale."""
    absmax = x.abs().amax(1, keepdim=True)
    best_d = _stored_scale(absmax)
    best_codes, best_error = _code_book_fit(x, best_d, values)
    mirrored = tuple(-value for value in reversed(values)) == values  # FP4: a negative scale gives the same fits
    candidates = [sign * factor for sign in ((1.0,) if mirrored else (1.0, -1.0)) for factor in SCALE_FACTORS]
    for factor in candidates[1:]:
        d = _stored_scale(absmax * factor)
        codes, error = _code_book_fit(x, d, values)
        better = error < best_error
        best_d, best_codes, best_error = (torch.where(better, d, best_d), torch.where(better, codes, best_codes),
                                          torch.where(better, error, best_error))
    entries = torch.tensor(values, dtype=torch.float32)[best_codes]
    energy = entries.square().sum(1, keepdim=True)
    fitted = (x * entries).sum(1, keepdim=True) / torch.where(energy == 0, torch.ones_like(energy), energy)
    d = _stored_scale(torch.where(energy == 0, best_d, fitted).clamp(-absmax / SCALE_FACTORS[-1],
                                                                      absmax / SCALE_FACTORS[-1]))
    codes, error = _code_book_fit(x, d, values)
    better = error < best_error
    best_d, best_codes = torch.where(better, d, best_d), torch.where(better, codes, best_codes)
    return torch.cat((_halves(best_d), _pack_nibbles(best_codes)), 1)


def _code_book_quantizer(values: tuple[float, ...]) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda x: quantize_code_book_searched(x, values)


# method name (lower case, as users write it) → (block type name in gguf_types.h, quantizer)
QUANTIZERS: dict[str, tuple[str, Callable[[torch.Tensor], torch.Tensor]]] = {
    "q8_0": ("Q8_0", quantize_q8_0), "q4_0": ("Q4_0", quantize_q4_0), "q4_1": ("Q4_1", quantize_q4_1),
    "q5_0": ("Q5_0", quantize_q5_0), "q5_1": ("Q5_1", quantize_q5_1),
    "nf4": ("NF4", _code_book_quantizer(NF4_VALUES)), "fp4": ("FP4", _code_book_quantizer(FP4_VALUES)),
    "q2_k": ("Q2_K", quantize_q2_k), "q3_k": ("Q3_K", quantize_q3_k), "q4_k": ("Q4_K", quantize_q4_k),
    "q5_k": ("Q5_K", quantize_q5_k), "q6_k": ("Q6_K", quantize_q6_k),
}


def method_for_width(method: str, columns: int) -> str:
    """`method`, or its FALLBACK where its super-blocks do not tile `columns` (llama.cpp's rule)."""
    if method in FALLBACK and columns % BY_NAME[QUANTIZERS[method][0]].block_elements:
        return FALLBACK[method]
    return method


def quantize_weight(weight: torch.Tensor, method: str, name: str = "weight") -> QuantizedWeight:
    """A [rows, columns] float matrix as blocks of `method` (a QUANTIZERS key); columns must be a multiple
    of 32. A k-quant method on a width that is not a multiple of its 256-value super-blocks takes its
    FALLBACK type instead. Raises ValueError for a weight beyond float16's range, where a block's scale or
    minimum could not be stored."""
    rows, columns = weight.shape
    method = method_for_width(method, columns)
    type_name, quantize = QUANTIZERS[method]
    block_type = BY_NAME[type_name]
    if columns % BLOCK:
        raise ValueError(f"{name}: {columns} columns are not a multiple of the {BLOCK}-value blocks")
    largest = float(weight.abs().max()) if weight.numel() else 0.0
    if not largest <= HALF_MAX:
        raise ValueError(f"{name}: a weight of magnitude {largest:g} is beyond float16's range ({HALF_MAX:g}), "
                         f"where {method}'s block scales are stored")
    blocks = torch.empty(rows, columns // block_type.block_elements * block_type.block_bytes, dtype=torch.uint8)
    step = max(1, CHUNK_ELEMENTS // columns)
    for start in range(0, rows, step):
        part = weight[start:start + step].to(torch.float32).reshape(-1, block_type.block_elements)
        blocks[start:start + step] = quantize(part).view(-1, blocks.shape[1])
    return QuantizedWeight(blocks, block_type.type_id, columns)


def skipped(module_name: str, skip_modules: tuple[str, ...]) -> bool:
    """transformers' rule for modules_to_not_convert: a name skips a module when it occurs in its path."""
    return any(entry in module_name for entry in skip_modules)


def module_methods(model: nn.Module, names: list[str], method: str) -> dict[str, str]:
    """The quantizer for each weight name: `method` itself, or per module role for a mixture (q4_k_m)."""
    if method not in MIXTURES:
        return dict.fromkeys(names, method)
    config = model.config
    return {name: module_method(method, name.removesuffix(".weight"), config.num_hidden_layers,
                                bool(config.tie_word_embeddings)) for name in names}


def quantize_modules(model: nn.Module, weights: dict, method: str, skip_modules: tuple[str, ...],
                     embeddings: bool) -> dict:
    """`weights` with each nn.Linear weight of `model` (and each nn.Embedding's, if `embeddings`) as blocks of
    `method` (a QUANTIZERS key or a mixture of assembly/quantize_mixture.py); skipped modules, other tensors
    and matrices whose width is not a multiple of 32 stay float."""
    kinds = (nn.Linear, nn.Embedding) if embeddings else (nn.Linear,)
    names = [f"{module_name}.weight" for module_name, module in model.named_modules()
             if type(module) in kinds and not skipped(module_name, skip_modules)]
    names = [name for name in names if name in weights and weights[name].shape[-1] % BLOCK == 0]
    methods = module_methods(model, names, method)
    # one matrix per Python thread, each op single-threaded: a busy core stalls no thread team (~8 ms per op)
    with one_thread_per_op() as workers, ThreadPoolExecutor(workers) as pool:
        quantized = pool.map(lambda name: quantize_weight(weights[name], methods[name], name), names)
        return {**weights, **dict(zip(names, quantized))}
