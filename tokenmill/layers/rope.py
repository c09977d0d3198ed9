"""Rotary position embeddings: inverse-frequency schedules (default, linear, dynamic NTK, llama3, yarn, longrope)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..execution.ops import TORCH_OPS, TorchOps


def _base_inv_freq(base: float, dim: int) -> torch.Tensor:
    return 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))


def _llama3_inv_freq(inv_freq: torch.Tensor, params: dict[str, Any]) -> torch.Tensor:
    factor = params["factor"]
    low, high = params["low_freq_factor"], params["high_freq_factor"]
    old_context = params["original_max_position_embeddings"]
    low_wavelen, high_wavelen = old_context / low, old_context / high
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_context / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return torch.where(is_medium, smoothed, scaled)


def _yarn_inv_freq(base: float, dim: int, params: dict[str, Any], max_positions: int):
    factor = params["factor"]
    original = params.get("original_max_position_embeddings") or max_positions
    beta_fast, beta_slow = params.get("beta_fast") or 32, params.get("beta_slow") or 1
    mscale = params.get("attention_factor")
    if mscale is None:
        mscale = 0.1 * math.log(factor) + 1.0 if factor > 1 else 1.0

    def correction_dim(rotations: float) -> float:
        return (dim * math.log(original / (rotations * 2 * math.pi))) / (2 * math.log(base))

    low = max(math.floor(correction_dim(beta_fast)), 0)
    high = min(math.ceil(correction_dim(beta_slow)), dim - 1)
    if low == high:
        high += 0.001
    ramp = ((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    extrapolation = _base_inv_freq(base, dim)
    interpolation = extrapolation / factor
    extrapolation_weight = 1 - ramp
    inv_freq = interpolation * (1 - extrapolation_weight) + extrapolation * extrapolation_weight
    return inv_freq, float(mscale)


class RotaryEmbedding(nn.Module):
    """Maps position ids to (cos, signed_sin), each [batch, 1, seq, rotary_dim]; stateless across calls.

    signed_sin is sin with its first half negated, so that rotate_half(x) * sin == x.roll(half) * signed_sin
    exactly (a sign flip is exact): one table made per step instead of a slice/negate/concat in every layer.
    """

    def __init__(self, head_dim: int, rope_parameters: dict[str, Any], max_position_embeddings: int):
        super().__init__()
        self.params = dict(rope_parameters)
        self.rope_type = self.params.get("rope_type", "default")
        self.base = float(self.params.get("rope_theta", 10000.0))
        self.dim = int(head_dim * self.params.get("partial_rotary_factor", 1.0))
        self.max_positions = max_position_embeddings
        self.attention_scaling = 1.0
        target = torch.get_default_device()  # the device a `with torch.device(...)` build asks for
        with torch.device("cpu"):  # real arithmetic even under a meta-device build (meta ops import torch._dynamo: ~2 s)
            inv_freq = self._initial_inv_freq().to(target)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def _initial_inv_freq(self) -> torch.Tensor:
        kind, params = self.rope_type, self.params
        if kind in ("default", "dynamic"):
            return _base_inv_freq(self.base, self.dim)
        if kind == "linear":
            return _base_inv_freq(self.base, self.dim) / params["factor"]
        if kind == "llama3":
            return _llama3_inv_freq(_base_inv_freq(self.base, self.dim), params)
        if kind == "yarn":
            inv_freq, self.attention_scaling = _yarn_inv_freq(self.base, self.dim, params, self.max_positions)
            return inv_freq
        if kind == "longrope":
            return self._longrope_inv_freq(params["short_factor"])
        raise ValueError(f"unsupported rope_type {kind!r}; supported: default, linear, dynamic, llama3, yarn, longrope")

    def _longrope_inv_freq(self, factors) -> torch.Tensor:
        original = self.params.get("original_max_position_embeddings") or self.max_positions
        scale = self.max_positions / original
        if self.params.get("attention_factor") is not None:
            self.attention_scaling = float(self.params["attention_factor"])
        elif scale > 1.0:
            self.attention_scaling = math.sqrt(1 + math.log(scale) / math.log(original))
        ext = torch.tensor(factors, dtype=torch.float32)
        return 1.0 / (ext * self.base ** (torch.arange(0, self.dim, 2).float() / self.dim))

    def _inv_freq_for(self, position_ids: torch.Tensor) -> torch.Tensor:
        """Schedules that depend on the sequence length pick their frequencies from the furthest position."""
        if self.rope_type not in ("dynamic", "longrope"):
            return self.inv_freq
        seq_len = int(position_ids.max()) + 1
        if self.rope_type == "longrope":
            original = self.params.get("original_max_position_embeddings") or self.max_positions
            if seq_len > original:
                return self._longrope_inv_freq(self.params["long_factor"]).to(self.inv_freq.device)
            return self.inv_freq
        if seq_len <= self.max_positions:
            return self.inv_freq
        factor = self.params["factor"]
        base = self.base * ((factor * seq_len / self.max_positions) - (factor - 1)) ** (self.dim / (self.dim - 2))
        return _base_inv_freq(base, self.dim).to(self.inv_freq.device)

    @torch.no_grad()
    def forward(self, position_ids: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        inv_freq = self._inv_freq_for(position_ids)
        # float32 angles: position * frequency loses precision in half types at long range
        angles = position_ids[..., None].float() * inv_freq[None, None, :].float()
        emb = torch.cat((angles, angles), dim=-1)
        cos = emb.cos() * self.attention_scaling
        sin = emb.sin() * self.attention_scaling
        half = sin.shape[-1] // 2
        signed_sin = torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)
        return cos.to(dtype).unsqueeze(1), signed_sin.to(dtype).unsqueeze(1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor,
                 ops: TorchOps = TORCH_OPS) -> torch.Tensor:
    """x: [batch, heads, seq, head_dim]; cos/signed_sin from RotaryEmbedding: [batch, 1, seq, rotary_dim]
    (rotary_dim may be < head_dim). Equals x * cos + rotate_half(x) * sin (the usual form), bit for bit."""
    return ops.rotary(x, cos, signed_sin)
