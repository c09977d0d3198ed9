"""Float weights → ggml's k-quant super-blocks (Q2_K … Q6_K): 256 values, float16 super-block scales, and
sub-block scales: 4-bit scale and min per 16 values (Q2_K), signed 6-bit scale per 16 (Q3_K), 6-bit scale and
min per 32 (Q4_K / Q5_K), int8 scale per 16 (Q6_K).

Each quantizer takes float32 super-blocks [n, 256] and returns their bytes uint8 [n, block_bytes] in the layout
loading/dequant.py reads. Written from the format, not from ggml's code (whose searches weight each value by
its magnitude); here every choice minimises the plain squared error of the values:
- Q4_K / Q5_K (x = d·sc·q - dmin·m, q in 0..nmax): per sub-block a grid of candidate steps around
  (max - min)/nmax, each followed by the least-squares (step, offset) for its codes, the offset kept ≤ 0
  (mins are stored unsigned); the 8 steps and 8 offsets then become 6-bit multiples of d = max step / 63 and
  dmin = max offset / 63, and the codes are rounded again against those stored values.
- Q6_K (x = d·sc·(q - 32), q - 32 in -32..31, sc int8): per 16 values a grid of steps around signed max / -32
  (the extreme value lands on -32, the longer side of the signed range), the best kept; the 16 steps become
  int8 multiples of d = the signed largest step / -128, and the codes are rounded against the stored steps.
- Q2_K: Q4_K's search on 16 values with codes 0..3, then 4-bit multiples (d = max / 15) of steps and offsets.
- Q3_K: Q6_K's search with codes -4..3, then signed 6-bit multiples of d = the signed largest step / -32.
"""

from __future__ import annotations

import torch

CANDIDATES = torch.linspace(-0.1, 0.1, 11)  # relative changes of the plain step tried by the searches
# a width that is not a multiple of 256 takes llama.cpp's fallback type for the same bits (its rule too)
FALLBACK = {"q2_k": "q4_0", "q3_k": "q4_0", "q4_k": "q5_0", "q5_k": "q5_1", "q6_k": "q8_0"}


def _halves(values: torch.Tensor) -> torch.Tensor:
    """float32 [n, 1] → their float16 bytes, uint8 [n, 2]."""
    return values.half().view(torch.uint8)


def _stored_half(values: torch.Tensor) -> torch.Tensor:
    """The float32 value a float16 field holds once written."""
    return values.half().float()


def _inverse(d: torch.Tensor) -> torch.Tensor:
    """1/d, and 0 where d is 0 (an all-zero (sub-)block)."""
    return torch.where(d == 0, torch.zeros_like(d), 1 / d)


def _affine_fit(x: torch.Tensor, nmax: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of x [..., k]: (step ≥ 0, offset ≤ 0) with x ≈ step·q + offset, q in 0..nmax, of least squared
    error among the candidate steps (each refitted by least squares on its own codes)."""
    low = x.amin(-1, keepdim=True).clamp(max=0)
    span = x.amax(-1, keepdim=True) - low
    shifted = x - low
    count = x.shape[-1]
    sum_x, sum_xx = x.sum(-1, keepdim=True), (x * x).sum(-1, keepdim=True)
    best_error = torch.full_like(low, float("inf"))
    best_step, best_offset = span / nmax, low
    for change in CANDIDATES.tolist():
        codes = (shifted * _inverse(span / (nmax * (1 + change)))).round_().clamp_(0, nmax)
        sum_q, sum_qq = codes.sum(-1, keepdim=True), (codes * codes).sum(-1, keepdim=True)
        sum_qx = (codes * x).sum(-1, keepdim=True)
        det = count * sum_qq - sum_q * sum_q
        step = torch.where(det > 0, (count * sum_qx - sum_q * sum_x) / det.clamp(min=1e-30), span / nmax)
        offset = torch.where(det > 0, (sum_qq * sum_x - sum_q * sum_qx) / det.clamp(min=1e-30), low)
        # an offset above 0 cannot be stored: refit the step alone with offset 0
        positive = offset > 0
        step = torch.where(positive, sum_qx / sum_qq.clamp(min=1e-30), step).clamp(min=0)
        offset = torch.where(positive, torch.zeros_like(offset), offset)
        # the squared error of step·q + offset against x, expanded into the sums already taken
        error = (step * step * sum_qq + 2 * step * offset * sum_q + count * offset * offset
                 - 2 * step * sum_qx - 2 * offset * sum_x + sum_xx)
        better = error < best_error
        best_error = torch.where(better, error, best_error)
        best_step, best_offset = torch.where(better, step, best_step), torch.where(better, offset, best_offset)
    return best_step, best_offset


def _six_bit(values: torch.Tensor, top: int = 63) -> tuple[torch.Tensor, torch.Tensor]:
    """values [n, k] ≥ 0 → (d [n, 1] as float16 stores it, codes 0..top [n, k]) with values ≈ d·code."""
    d = _stored_half(values.amax(1, keepdim=True) / top)
    return d, (values * _inverse(d)).round().clamp(0, top)


def _pack_k_scales(scale: torch.Tensor, minimum: torch.Tensor) -> torch.Tensor:
    """8 six-bit scales and 8 six-bit mins [n, 8] → the 12-byte Q4_K / Q5_K header: bytes 0-3 and 4-7 hold
    scales / mins 0-3 in their low 6 bits and the top 2 bits of scales / mins 4-7; bytes 8-11 their low nibbles."""
    scale, minimum = scale.to(torch.uint8), minimum.to(torch.uint8)
    first = scale[:, :4] | ((scale[:, 4:] >> 4) << 6)
    second = minimum[:, :4] | ((minimum[:, 4:] >> 4) << 6)
    third = (scale[:, 4:] & 0x0F) | ((minimum[:, 4:] & 0x0F) << 4)
    return torch.cat((first, second, third), 1)


def _pack_pairs_of_nibbles(codes: torch.Tensor) -> torch.Tensor:
    """[n, 8, 32] codes → [n, 128] bytes: each 32 bytes hold sub-block 2g in low nibbles, 2g + 1 in high."""
    low = (codes.to(torch.uint8) & 0x0F).view(-1, 4, 2, 32)
    return (low[:, :, 0] | (low[:, :, 1] << 4)).reshape(-1, 128)


def k_codes(x: torch.Tensor, nmax: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                                   torch.Tensor]:
    """Q4_K / Q5_K: x [n, 256] → (d, dmin [n, 1] as stored, scale and min codes [n, 8], value codes [n, 8, 32])."""
    sub_blocks = x.view(-1, 8, 32)
    step, offset = _affine_fit(sub_blocks, nmax)
    d, scale = _six_bit(step.squeeze(-1))
    dmin, minimum = _six_bit(-offset.squeeze(-1))
    stored_step = (d * scale).unsqueeze(-1)
    stored_offset = (dmin * minimum).unsqueeze(-1)
    codes = ((sub_blocks + stored_offset) * _inverse(stored_step)).round().clamp(0, nmax)
    return d, dmin, scale, minimum, codes


def quantize_q4_k(x: torch.Tensor) -> torch.Tensor:
    d, dmin, scale, minimum, codes = k_codes(x, 15)
    return torch.cat((_halves(d), _halves(dmin), _pack_k_scales(scale, minimum), _pack_pairs_of_nibbles(codes)), 1)


def quantize_q5_k(x: torch.Tensor) -> torch.Tensor:
    d, dmin, scale, minimum, codes = k_codes(x, 31)
    # bit 4 of element i of sub-block j is bit j of high byte i
    high_bits = ((codes.to(torch.int32) >> 4) & 1) << torch.arange(8, dtype=torch.int32).view(1, 8, 1)
    high = high_bits.sum(1).to(torch.uint8)
    return torch.cat((_halves(d), _halves(dmin), _pack_k_scales(scale, minimum), high,
                      _pack_pairs_of_nibbles(codes)), 1)


def _signed_fit(x: torch.Tensor, half: int) -> torch.Tensor:
    """Per row of x [..., 16]: the step s (of either sign) with x ≈ s·q, q in -half..half-1, of least squared
    error among candidates around signed max / -half."""
    extreme = x.gather(-1, x.abs().argmax(-1, keepdim=True))
    plain = extreme / -half
    best_error = torch.full_like(plain, float("inf"))
    best_step = plain
    for change in CANDIDATES.tolist():
        step = plain * (1 + change)
        codes = (x * _inverse(step)).round_().clamp_(-half, half - 1)
        # the squared error of step·q against x, less the constant sum of x²
        error = step * step * (codes * codes).sum(-1, keepdim=True) - 2 * step * (codes * x).sum(-1, keepdim=True)
        better = error < best_error
        best_error, best_step = torch.where(better, error, best_error), torch.where(better, step, best_step)
    return best_step


def q6_k_codes(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Q6_K: x [n, 256] → (d [n, 1] as stored, int8 scales [n, 16], codes -32..31 [n, 16, 16])."""
    sub_blocks = x.view(-1, 16, 16)
    step = _signed_fit(sub_blocks, 32).squeeze(-1)
    d = _stored_half(step.gather(1, step.abs().argmax(1, keepdim=True)) / -128)
    scale = (step * _inverse(d)).round().clamp(-128, 127)
    stored_step = (d * scale).unsqueeze(-1)
    return d, scale, (sub_blocks * _inverse(stored_step)).round().clamp(-32, 31)


def quantize_q6_k(x: torch.Tensor) -> torch.Tensor:
    d, scale, signed_codes = q6_k_codes(x)
    codes = (signed_codes + 32).to(torch.uint8).view(-1, 2, 4, 32)
    low, high = codes & 0x0F, codes >> 4
    # each 64-byte half: bytes 0-31 hold quarters 0 (low nibble) and 2 (high), bytes 32-63 quarters 1 and 3
    packed_low = torch.cat((low[:, :, 0] | (low[:, :, 2] << 4), low[:, :, 1] | (low[:, :, 3] << 4)), 2)
    # each 32-byte half of the high bits: crumb k of byte i is bits 4-5 of quarter k's element i
    packed_high = high[:, :, 0] | (high[:, :, 1] << 2) | (high[:, :, 2] << 4) | (high[:, :, 3] << 6)
    return torch.cat((packed_low.reshape(-1, 128), packed_high.reshape(-1, 64),
                      scale.to(torch.int8).view(torch.uint8), _halves(d)), 1)


def _pack_crumbs(codes: torch.Tensor) -> torch.Tensor:
    """[n, 256] codes 0..3 → [n, 64] bytes: each 32-byte half holds its 128 values as 4 runs of 32, run k in
    bits 2k..2k+1 of byte i."""
    runs = codes.to(torch.uint8).view(-1, 2, 4, 32)
    return (runs[:, :, 0] | (runs[:, :, 1] << 2) | (runs[:, :, 2] << 4) | (runs[:, :, 3] << 6)).reshape(-1, 64)


def q2_k_codes(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Q2_K: x [n, 256] → (d, dmin [n, 1] as stored, 4-bit scale and min codes [n, 16], codes 0..3 [n, 16, 16])."""
    sub_blocks = x.view(-1, 16, 16)
    step, offset = _affine_fit(sub_blocks, 3)
    d, scale = _six_bit(step.squeeze(-1), 15)
    dmin, minimum = _six_bit(-offset.squeeze(-1), 15)
    codes = ((sub_blocks + (dmin * minimum).unsqueeze(-1)) * _inverse((d * scale).unsqueeze(-1))).round().clamp(0, 3)
    return d, dmin, scale, minimum, codes


def quantize_q2_k(x: torch.Tensor) -> torch.Tensor:
    d, dmin, scale, minimum, codes = q2_k_codes(x)
    scales = scale.to(torch.uint8) | (minimum.to(torch.uint8) << 4)
    return torch.cat((scales, _pack_crumbs(codes.view(-1, 256)), _halves(d), _halves(dmin)), 1)


def q3_k_codes(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Q3_K: x [n, 256] → (d [n, 1] as stored, signed 6-bit scales -32..31 [n, 16], codes -4..3 [n, 16, 16])."""
    sub_blocks = x.view(-1, 16, 16)
    step = _signed_fit(sub_blocks, 4).squeeze(-1)
    d = _stored_half(step.gather(1, step.abs().argmax(1, keepdim=True)) / -32)
    scale = (step * _inverse(d)).round().clamp(-32, 31)
    return d, scale, (sub_blocks * _inverse((d * scale).unsqueeze(-1))).round().clamp(-4, 3)


def quantize_q3_k(x: torch.Tensor) -> torch.Tensor:
    d, scale, signed_codes = q3_k_codes(x)
    codes = (signed_codes + 4).to(torch.uint8).view(-1, 256)
    # bit 2 of value j·32 + i is bit j of mask byte i (a set bit: no 4 subtracted)
    high = ((codes >> 2).view(-1, 8, 32).to(torch.int32) << torch.arange(8, dtype=torch.int32).view(1, 8, 1))
    stored_scale = (scale + 32).to(torch.uint8)  # 6 bits: low nibbles in bytes 0-7, top 2 bits in bytes 8-11
    low = stored_scale & 0x0F
    top = (stored_scale >> 4).view(-1, 4, 4)
    scales = torch.cat((low[:, :8] | (low[:, 8:] << 4),
                        top[:, 0] | (top[:, 1] << 2) | (top[:, 2] << 4) | (top[:, 3] << 6)), 1)
    return torch.cat((high.sum(1).to(torch.uint8), _pack_crumbs(codes & 3), scales, _halves(d)), 1)
