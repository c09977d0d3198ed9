"""What generate() returns with return_dict_in_generate=True (transformers' field names)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class GenerateDecoderOnlyOutput:
    sequences: torch.Tensor
    scores: tuple[torch.Tensor, ...] | None = None  # processed scores, one [batch, vocab] per step
    logits: tuple[torch.Tensor, ...] | None = None  # raw logits, one [batch, vocab] per step
    past_key_values: object | None = None

    def __getitem__(self, key):
        return getattr(self, key)

    def __contains__(self, key) -> bool:
        return getattr(self, key, None) is not None


@dataclass
class GenerateBeamDecoderOnlyOutput(GenerateDecoderOnlyOutput):
    sequences_scores: torch.Tensor | None = None  # [batch * num_return_sequences] length-penalised log-prob
    beam_indices: torch.Tensor | None = None  # [batch * num_return_sequences, generated] row of each step, -1 past end
