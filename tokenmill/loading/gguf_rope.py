"""Llama 3 rope scaling recovered from llama.cpp's `rope_freqs` tensor (the GGUF stores the divisors, not the
parameters that made them)."""

from __future__ import annotations

import torch

LLAMA3_ORIGINAL_CONTEXT = 8192  # every Llama 3.x model; llama.cpp does not store it


def llama3_rope_parameters(divisors: torch.Tensor, theta: float, rotary_dim: int) -> dict | None:
    """Llama 3 rope scaling parameters that reproduce llama.cpp's `rope_freqs` divisors, or None if none do.

    Low frequencies are divided by `factor`, high ones kept, and in between the smoothing weight
    s = (original / wavelength - low_freq_factor) / (high_freq_factor - low_freq_factor) is linear in
    1 / wavelength, so a line fitted through the in-between divisors gives both frequency factors.
    """
    original = LLAMA3_ORIGINAL_CONTEXT
    inv_freq = 1.0 / theta ** (torch.arange(0, rotary_dim, 2, dtype=torch.float64) / rotary_dim)
    wavelength = 2 * torch.pi / inv_freq
    factor = float(divisors.max())
    if factor <= 1.0 or divisors.shape != inv_freq.shape:
        return None
    medium = (divisors > 1 + 1e-6) & (divisors < factor * (1 - 1e-6))
    low_freq_factor, high_freq_factor = 1.0, 4.0  # Meta's values, used when no point pins the line
    if int(medium.sum()) >= 2:
        smooth = (1 / divisors[medium] - 1 / factor) / (1 - 1 / factor)
        x = original / wavelength[medium]
        slope = float(((x - x.mean()) * (smooth - smooth.mean())).sum() / ((x - x.mean()) ** 2).sum())
        intercept = float(smooth.mean() - slope * x.mean())
        low_freq_factor = round(-intercept / slope, 4)
        high_freq_factor = round(low_freq_factor + 1 / slope, 4)
    params = {"rope_type": "llama3", "factor": factor, "low_freq_factor": low_freq_factor,
              "high_freq_factor": high_freq_factor, "original_max_position_embeddings": original}
    return params if torch.allclose(llama3_divisors(params, wavelength), divisors, rtol=1e-4) else None


def llama3_divisors(params: dict, wavelength: torch.Tensor) -> torch.Tensor:
    """What each rotary frequency is divided by under Llama 3 scaling."""
    original, factor = params["original_max_position_embeddings"], params["factor"]
    low, high = params["low_freq_factor"], params["high_freq_factor"]
    smooth = (original / wavelength - low) / (high - low)
    divisors = 1 / ((1 - smooth) / factor + smooth)
    divisors = torch.where(wavelength > original / low, torch.full_like(divisors, factor), divisors)
    return torch.where(wavelength < original / high, torch.ones_like(divisors), divisors)
