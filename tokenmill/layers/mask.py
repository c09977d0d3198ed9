"""Attention masks from a 2D padding mask and the cache length; causal, optionally windowed."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class AttentionMask:
    """`allowed` [batch, 1, q, kv] is True where a query may attend a key; None means plain causal (see is_causal)."""

    allowed: torch.Tensor | None
    is_causal: bool


def _capturing(padding_mask: torch.Tensor) -> bool:
    """A CUDA graph is being recorded: no host sync may happen, so the mask is built as if padded (exact for a
    full mask too: every key is then present)."""
    return padding_mask.is_cuda and torch.cuda.is_current_stream_capturing()


def build_attention_mask(
    padding_mask: torch.Tensor | None,
    past_length: int,
    query_length: int,
    batch_size: int,
    device: torch.device,
    sliding_window: int | None = None,
) -> AttentionMask:
    """padding_mask: [batch, past + query] with 1 for tokens and 0 for padding (transformers' attention_mask)."""
    kv_length = past_length + query_length
    has_padding = padding_mask is not None and (_capturing(padding_mask) or not bool(padding_mask.all()))
    window_matters = sliding_window is not None and kv_length > sliding_window
    if not has_padding and not window_matters:
        if query_length == 1:
            return AttentionMask(None, is_causal=False)
        if past_length == 0:
            return AttentionMask(None, is_causal=True)
    query_slots = torch.arange(past_length, kv_length, device=device)[:, None]
    key_slots = torch.arange(kv_length, device=device)[None, :]
    allowed = key_slots <= query_slots
    if sliding_window is not None:
        allowed = allowed & (key_slots > query_slots - sliding_window)
    allowed = allowed[None, None].expand(batch_size, 1, query_length, kv_length)
    if has_padding:
        keys_present = padding_mask[:, None, None, -kv_length:].to(device=device, dtype=torch.bool)
        # a padding query may see itself, so no row is empty (an empty row makes SDPA return NaN)
        allowed = (allowed & keys_present) | (key_slots == query_slots)[None, None]
    return AttentionMask(allowed, is_causal=False)
