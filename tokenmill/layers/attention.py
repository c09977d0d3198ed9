"""Multi-head / grouped-query attention with rotary embeddings and an optional KV cache.

What varies across families (q/k norms, bias, scaling, soft-capping, sliding window) is a constructor
argument, not a branch on model_type.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..cache.base import Cache
from ..execution.ops import TORCH_OPS, TorchOps
from .lora import NO_LORA, LoraBatch
from .mask import AttentionMask
from .mlp import FusedProjection, fuse
from .norm import RMSNorm
from .rope import apply_rotary

ATTN_IMPLEMENTATIONS = ("sdpa", "eager")


class Attention(nn.Module):
    lora_targets = ("q_proj", "k_proj", "v_proj", "o_proj")  # the projections forward() runs through `lora`

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        num_kv_heads: int,
        head_dim: int,
        layer_idx: int,
        *,
        qkv_bias: bool = False,
        out_bias: bool = False,
        scaling: float | None = None,
        softcap: float | None = None,
        sliding_window: int | None = None,
        qk_norm_eps: float | None = None,
        qk_norm_unit_offset: bool = False,
        attn_implementation: str = "sdpa",
    ):
        super().__init__()
        if attn_implementation not in ATTN_IMPLEMENTATIONS:
            raise ValueError(
                f"attn_implementation must be one of {ATTN_IMPLEMENTATIONS}, got {attn_implementation!r}"
            )
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.layer_idx = layer_idx
        self.scaling = head_dim**-0.5 if scaling is None else scaling
        self.softcap = softcap
        self.sliding_window = sliding_window
        self.attn_implementation = attn_implementation
        self.q_proj = nn.Linear(hidden_size, num_heads * head_dim, bias=qkv_bias)
        self.k_proj = nn.Linear(hidden_size, num_kv_heads * head_dim, bias=qkv_bias)
        self.v_proj = nn.Linear(hidden_size, num_kv_heads * head_dim, bias=qkv_bias)
        self.o_proj = nn.Linear(num_heads * head_dim, hidden_size, bias=out_bias)
        if qk_norm_eps is not None:
            self.q_norm = RMSNorm(head_dim, qk_norm_eps, unit_offset=qk_norm_unit_offset)
            self.k_norm = RMSNorm(head_dim, qk_norm_eps, unit_offset=qk_norm_unit_offset)
        else:
            self.q_norm = self.k_norm = None
        self._qkv: FusedProjection | None = None

    def fuse_projections(self) -> None:
        """One [q|k|v] matmul per call instead of three (see FusedProjection); called once weights are loaded."""
        self._qkv = fuse([self.q_proj, self.k_proj, self.v_proj])

    def _fused_qkv(self) -> FusedProjection | None:
        fused = self._qkv
        return fused if fused is not None and fused.is_current() else None

    def project_qkv(self, hidden: torch.Tensor, lora: LoraBatch = NO_LORA):
        batch, length, _ = hidden.shape
        fused = self._fused_qkv()
        if fused is not None:
            qkv = lora.project_fused(fused, hidden).view(batch, length, -1, self.head_dim)
            return qkv.split([self.num_heads, self.num_kv_heads, self.num_kv_heads], dim=2)
        q = lora.project(self.q_proj, hidden).view(batch, length, self.num_heads, self.head_dim)
        k = lora.project(self.k_proj, hidden).view(batch, length, self.num_kv_heads, self.head_dim)
        v = lora.project(self.v_proj, hidden).view(batch, length, self.num_kv_heads, self.head_dim)
        return q, k, v

    def forward(
        self,
        hidden: torch.Tensor,  # [batch, q_len, hidden]
        rope: tuple[torch.Tensor, torch.Tensor] | None,
        mask: AttentionMask,
        cache: Cache | None,
        ops: TorchOps = TORCH_OPS,
        lora: LoraBatch = NO_LORA,
    ) -> torch.Tensor:
        batch, length, _ = hidden.shape
        q, k, v = self.rotated_qkv(hidden, rope, ops, lora)
        allowed, is_causal = mask.allowed, mask.is_causal
        native = ops.attends(q, k, self.softcap)
        slots = None
        if cache is not None:
            layer_cache = cache.layer(self.layer_idx)
            if native:  # the kernel reads a paged cache's pool rows where they are, without gathering them
                k, v, slots = layer_cache.update_slots(k, v)
            else:
                k, v = layer_cache.update(k, v)
            # the cache may store fewer (window) or more (preallocated) columns than positions seen
            allowed, is_causal = layer_cache.visible_mask(allowed, is_causal, length)
        if native:  # tensor parallelism: o_proj holds this rank's head columns, the ranks' sums add up
            return ops.all_reduce(lora.project(self.o_proj, ops.attention(q, k, v, allowed, is_causal,
                                                                          self.scaling, slots)))
        if self.attn_implementation == "eager" or self.softcap is not None:
            out = self._eager(q, k, v, allowed, is_causal)
        else:
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=allowed, is_causal=is_causal and allowed is None,
                scale=self.scaling, enable_gqa=self.num_kv_heads != self.num_heads,
            )
        out = out.transpose(1, 2).reshape(batch, length, self.num_heads * self.head_dim)
        return ops.all_reduce(lora.project(self.o_proj, out))

    def rotated_qkv(self, hidden: torch.Tensor, rope, ops: TorchOps = TORCH_OPS,
                    lora: LoraBatch = NO_LORA) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v as [batch, heads, seq, head_dim], q and k normed (if the family does) and rotated."""
        fused = self._fused_qkv() if self.q_norm is None else None
        if fused is not None:  # q and k are adjacent in the fused output: rotate both in one pass
            batch, length, _ = hidden.shape
            qkv = lora.project_fused(fused, hidden).view(batch, length, -1, self.head_dim).transpose(1, 2)
            qk, v = qkv.split([self.num_heads + self.num_kv_heads, self.num_kv_heads], dim=1)
            if rope is not None:
                qk = apply_rotary(qk, *rope, ops)
            q, k = qk.split([self.num_heads, self.num_kv_heads], dim=1)
            return q, k, v
        q, k, v = self.project_qkv(hidden, lora)
        if self.q_norm is not None:
            q, k = self.q_norm(q, ops), self.k_norm(k, ops)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        if rope is not None:
            q, k = apply_rotary(q, *rope, ops), apply_rotary(k, *rope, ops)
        return q, k, v

    def _eager(self, q, k, v, allowed, is_causal):
        groups = self.num_heads // self.num_kv_heads
        k = k.repeat_interleave(groups, dim=1)
        v = v.repeat_interleave(groups, dim=1)
        scores = torch.matmul(q, k.transpose(2, 3)) * self.scaling
        if self.softcap is not None:
            scores = torch.tanh(scores / self.softcap) * self.softcap
        if allowed is None and is_causal:
            q_len, k_len = scores.shape[-2:]
            allowed = torch.ones(q_len, k_len, dtype=torch.bool, device=q.device).tril(k_len - q_len)
        if allowed is not None:
            scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
        probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
        return torch.matmul(probs, v)
