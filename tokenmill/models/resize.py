"""Vocabulary resizing after tokenizer.add_tokens: the embedding (and an untied lm_head) grow or shrink."""

from __future__ import annotations

import torch
from torch import nn


def _resized_rows(weight: torch.Tensor, rows: int, mean_resizing: bool) -> torch.Tensor:
    """Old rows kept as they are; new rows at the mean of the old ones (or zeros), so old logits are unchanged."""
    resized = weight.new_zeros(rows, *weight.shape[1:])
    kept = min(rows, weight.shape[0])
    resized[:kept] = weight[:kept]
    if rows > kept and mean_resizing:
        resized[kept:] = weight.float().mean(dim=0).to(weight.dtype)
    return resized


def resize_token_embeddings(model, new_num_tokens: int | None, pad_to_multiple_of: int | None = None,
                            mean_resizing: bool = True) -> nn.Embedding:
    embed = model.get_input_embeddings()
    if new_num_tokens is None and pad_to_multiple_of is None:
        return embed
    rows = embed.weight.shape[0] if new_num_tokens is None else int(new_num_tokens)
    if pad_to_multiple_of:
        rows = -(-rows // pad_to_multiple_of) * pad_to_multiple_of
    if rows <= 0:
        raise ValueError(f"new_num_tokens must be positive, got {rows}")
    with torch.no_grad():
        new_embed = nn.Embedding(rows, embed.weight.shape[1], device=embed.weight.device, dtype=embed.weight.dtype)
        new_embed.weight = nn.Parameter(_resized_rows(embed.weight, rows, mean_resizing),
                                        requires_grad=embed.weight.requires_grad)
        model.model.embed_tokens = new_embed
        head = model.lm_head
        if model.config.tie_word_embeddings:
            model.tie_weights()
        else:
            new_head = nn.Linear(head.in_features, rows, bias=head.bias is not None,
                                 device=head.weight.device, dtype=head.weight.dtype)
            new_head.weight = nn.Parameter(_resized_rows(head.weight, rows, mean_resizing),
                                           requires_grad=head.weight.requires_grad)
            if head.bias is not None:
                new_head.bias = nn.Parameter(_resized_rows(head.bias, rows, False), requires_grad=False)
            model.lm_head = new_head
    model.config.vocab_size = rows
    return new_embed
