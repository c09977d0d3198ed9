"""How close a quantized model stays to its float32 original over one teacher-forced text: perplexity, logit
cosine and top-1 agreement, and what bitsandbytes' own formats would give on the same float weights.

The bitsandbytes simulation is written here in torch from the formats' definitions (no bitsandbytes import):
- int8 (LLM.int8, `load_in_8bit`): each weight row scaled by its absmax / 127 and rounded (half to even, as
  `__float2int_rn`); each call's activations quantized per token the same way, except the input columns that
  hold an element of magnitude >= 6.0 (the default `llm_int8_threshold`), which multiply in float; outlier
  elements do not count in their token's absmax. The products are exact in int32, so multiplying the
  dequantized values in float32 reproduces them up to float32 rounding.
- 4-bit (`load_in_4bit`): blocks of 64 consecutive weights of the flattened matrix, a float32 absmax per block,
  each weight the nearest code-book entry (NF4 or FP4, the same tables as tokenmill's); with double quantization
  the absmaxes, less their mean, are stored as 8-bit codes of the signed dynamic map in blocks of 256 with a
  float32 absmax.
bitsandbytes computes in float16 on the GPU; the simulation stays in float32 (the quantization is the subject).
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from ..loading.dequant import FP4_VALUES, NF4_VALUES
from .memory import weight_bytes

LLM_INT8_THRESHOLD = 6.0  # transformers' BitsAndBytesConfig default
BNB_4BIT_BLOCK = 64  # bitsandbytes' default blocksize for Linear4bit weights
BNB_NESTED_BLOCK = 256  # double quantization: blocks of absmaxes
LOGIT_CHUNK = 256  # positions whose vocabulary logits exist at once (Gemma 3's 262k vocabulary: 268 MB)
BITSANDBYTES_METHODS = ("int8", "nf4", "fp4", "nf4-double-quant", "fp4-double-quant")


@dataclass(frozen=True)
class Quality:
    """One model against the float32 reference over the same positions."""

    weight_bytes: int
    perplexity: float
    logit_cosine: float  # mean over positions of the cosine between the two logit vectors
    top1_agreement: float  # fraction of positions whose argmax equals the reference's


# ---- teacher-forced measurement ----

class _HiddenCapture(nn.Module):
    """Stands in for lm_head during one forward: keeps the final hidden states, returns one logit per position."""

    def __init__(self):
        super().__init__()
        self.hidden = None

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        self.hidden = hidden
        return hidden[..., :1]


def final_hidden(model, ids: torch.Tensor) -> torch.Tensor:
    """[positions, hidden] the lm_head would see for `ids` [1, positions], with no [positions, vocab] logits."""
    head, capture = model.lm_head, _HiddenCapture()
    model.lm_head = capture
    try:
        with torch.no_grad():
            model(ids, use_cache=False)
    finally:
        model.lm_head = head
    return capture.hidden[0]


def logit_chunks(model, ids: torch.Tensor):
    """The logits [positions, vocab] for `ids` [1, positions], LOGIT_CHUNK positions at a time (one forward)."""
    hidden = final_hidden(model, ids)
    cap = getattr(model, "final_logit_softcap", None)
    for start in range(0, hidden.shape[0], LOGIT_CHUNK):
        with torch.no_grad():
            logits = model.lm_head(hidden[start:start + LOGIT_CHUNK])
        yield logits if cap is None else torch.tanh(logits / cap) * cap


def teacher_forced_logits(model, ids: torch.Tensor) -> torch.Tensor:
    """[positions, vocab]: the reference every quantized model is compared with."""
    return torch.cat(list(logit_chunks(model, ids)))


def compare(model, ids: torch.Tensor, reference_logits: torch.Tensor, model_bytes: int | None = None) -> Quality:
    """`model` over every position of `ids` [1, positions]: its perplexity on the text, and the cosine / top-1
    agreement of its logits with `reference_logits` (teacher_forced_logits of the float32 model)."""
    if ids.dim() != 2 or ids.shape[0] != 1 or ids.shape[1] < 2:
        raise ValueError(f"ids must be one row of at least 2 tokens, got shape {tuple(ids.shape)}")
    if reference_logits.shape[0] != ids.shape[1]:
        raise ValueError(f"reference_logits cover {reference_logits.shape[0]} positions, ids {ids.shape[1]}")
    targets = ids[0, 1:]
    negative_log_likelihood, cosine, agree, start = 0.0, 0.0, 0, 0
    for logits in logit_chunks(model, ids):
        expected = reference_logits[start:start + logits.shape[0]]
        cosine += torch.nn.functional.cosine_similarity(logits.double(), expected.double(), dim=-1).sum().item()
        agree += int((logits.argmax(-1) == expected.argmax(-1)).sum())
        scored = targets[start:start + logits.shape[0]]  # position t predicts token t + 1: the last has none
        log_probs = torch.log_softmax(logits[:len(scored)].double(), -1)
        negative_log_likelihood -= log_probs.gather(1, scored[:, None]).sum().item()
        start += logits.shape[0]
    positions = ids.shape[1]
    return Quality(weight_bytes(model) if model_bytes is None else model_bytes,
                   math.exp(negative_log_likelihood / (positions - 1)), cosine / positions, agree / positions)


# ---- bitsandbytes' formats, simulated ----

def int8_rows(weight: torch.Tensor) -> torch.Tensor:
    """LLM.int8's weight: int8 codes round(w * 127 / row absmax), dequantized."""
    scale = weight.abs().amax(1, keepdim=True) / 127
    return torch.round(weight / torch.where(scale == 0, torch.ones_like(scale), scale)) * scale


def int8_activations(x: torch.Tensor, threshold: float = LLM_INT8_THRESHOLD) -> torch.Tensor:
    """The input as LLM.int8 multiplies it: outlier columns (any |x| >= threshold in this call) as they are, the
    rest int8 per token (absmax of the token's non-outlier elements / 127), dequantized."""
    rows = x.reshape(-1, x.shape[-1]).float()
    outliers = rows.abs() >= threshold
    outlier_columns = outliers.any(0)
    scale = rows.masked_fill(outliers, 0).abs().amax(1, keepdim=True) / 127
    quantized = torch.round(rows / torch.where(scale == 0, torch.ones_like(scale), scale)) * scale
    return torch.where(outlier_columns, rows, quantized).to(x.dtype).view_as(x)


def signed_dynamic_map() -> torch.Tensor:
    """bitsandbytes' 8-bit signed dynamic code (Dettmers 2015): for exponents e = 0..6, the 2^e midpoints of an
    even split of [0.1, 1] into 2^e parts, times 10^(e - 6), with both signs; then 0 and 1. 256 sorted values."""
    magnitudes = []
    for exponent in range(7):
        edges = torch.linspace(0.1, 1, 2 ** exponent + 1, dtype=torch.float32)
        magnitudes.append((edges[:-1] + edges[1:]) / 2 * 10.0 ** (exponent - 6))
    positive = torch.cat(magnitudes)
    return torch.cat((-positive, positive, torch.tensor([0.0, 1.0]))).sort().values


def nearest_codes(scaled: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Index of the nearest entry of the sorted `table` for each value (midpoints between neighbours)."""
    return torch.bucketize(scaled, (table[1:] + table[:-1]) / 2)


def _blockwise(values: torch.Tensor, block: int, table: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes and float32 absmax per block of `block` consecutive values (the last block may be short)."""
    flat = values.reshape(-1)
    padded = torch.nn.functional.pad(flat, (0, -flat.numel() % block)).view(-1, block)
    absmax = padded.abs().amax(1, keepdim=True)
    codes = nearest_codes(padded / torch.where(absmax == 0, torch.ones_like(absmax), absmax), table)
    return codes, absmax


def double_quantized(absmax: torch.Tensor) -> torch.Tensor:
    """Block absmaxes as bitsandbytes' double quantization stores them: less their mean, 8-bit dynamic codes in
    blocks of 256 with a float32 absmax each, dequantized."""
    offset = absmax.mean()
    table = signed_dynamic_map()
    codes, nested_absmax = _blockwise(absmax - offset, BNB_NESTED_BLOCK, table)
    return (table[codes] * nested_absmax).reshape(-1)[:absmax.numel()].view_as(absmax) + offset


def four_bit_blocks(weight: torch.Tensor, quant_type: str, double_quant: bool = False) -> torch.Tensor:
    """bitsandbytes' NF4 / FP4 weight (blocks of 64, float32 or double-quantized absmax), dequantized."""
    table = torch.tensor(NF4_VALUES if quant_type == "nf4" else FP4_VALUES, dtype=torch.float32)
    codes, absmax = _blockwise(weight.float(), BNB_4BIT_BLOCK, table)
    if double_quant:
        absmax = double_quantized(absmax)
    return (table[codes] * absmax).reshape(-1)[:weight.numel()].view_as(weight)


def _bitsandbytes_bytes(rows: int, columns: int, method: str) -> int:
    """Storage bitsandbytes uses for one [rows, columns] matrix."""
    if method == "int8":
        return rows * columns + 4 * rows  # int8 codes, a float32 scale per row
    blocks = math.ceil(rows * columns / BNB_4BIT_BLOCK)
    if method.endswith("double-quant"):
        return rows * columns // 2 + blocks + 4 * math.ceil(blocks / BNB_NESTED_BLOCK) + 4  # + the mean
    return rows * columns // 2 + 4 * blocks


def _quantized_linears(model, skip_modules: tuple[str, ...]) -> list[nn.Linear]:
    return [module for name, module in model.named_modules()
            if type(module) is nn.Linear and not any(entry in name for entry in skip_modules)]


@contextmanager
def simulated_bitsandbytes(model, method: str, skip_modules: tuple[str, ...] = ("lm_head",)):
    """Inside the block, `model`'s float Linear layers (outside `skip_modules`, transformers' substring rule)
    compute as bitsandbytes' `method` would (one of BITSANDBYTES_METHODS); yields the weight bytes
    bitsandbytes would hold. The float weights come back on exit."""
    if method not in BITSANDBYTES_METHODS:
        raise ValueError(f"unknown bitsandbytes method {method!r}; simulated: {', '.join(BITSANDBYTES_METHODS)}")
    linears = _quantized_linears(model, skip_modules)
    originals = [module.weight.detach().clone() for module in linears]
    hooks = []
    stored = weight_bytes(model)
    for module, weight in zip(linears, originals):
        if method == "int8":
            module.weight.data.copy_(int8_rows(weight))
            hooks.append(module.register_forward_pre_hook(lambda _, args: (int8_activations(args[0]), *args[1:])))
        else:
            quant_type, _, nested = method.partition("-")
            module.weight.data.copy_(four_bit_blocks(weight, quant_type, bool(nested)))
        stored += _bitsandbytes_bytes(*weight.shape, method) - weight.numel() * weight.element_size()
    try:
        yield stored
    finally:
        for hook in hooks:
            hook.remove()
        for module, weight in zip(linears, originals):
            module.weight.data.copy_(weight)
