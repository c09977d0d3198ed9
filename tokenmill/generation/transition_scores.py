"""Per-token log-probabilities: transformers' compute_transition_scores, and the logprobs / top-n
alternatives the HTTP servers report (OpenAI `logprobs`/`top_logprobs`, TGI `top_n_tokens`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch


@dataclass
class TokenLogprobs:
    chosen: torch.Tensor  # [batch, steps] log-probability of each chosen token
    top_ids: torch.Tensor  # [batch, steps, top_n] most likely alternatives, best first
    top_logprobs: torch.Tensor  # [batch, steps, top_n]
    ranks: torch.Tensor  # [batch, steps] 1-based rank of the chosen token (1 = most likely)


def stack_steps(scores_or_logits) -> torch.Tensor:
    """Per-step [batch, vocab] tensors (a tuple, as generate returns) or one tensor → [batch, steps, vocab]."""
    if isinstance(scores_or_logits, torch.Tensor):
        if scores_or_logits.dim() == 2:
            return scores_or_logits[:, None, :]
        if scores_or_logits.dim() == 3:
            return scores_or_logits
        raise ValueError(f"expected a [batch, vocab] or [batch, steps, vocab] tensor, got shape "
                         f"{tuple(scores_or_logits.shape)}")
    steps = list(scores_or_logits)
    if not steps:
        raise ValueError("no scores given: generate with output_scores=True or output_logits=True")
    return torch.stack(steps, dim=1)


def token_logprobs(scores_or_logits, chosen_ids: torch.Tensor, top_n: int = 0,
                   normalize: bool = True) -> TokenLogprobs:
    """Log-probabilities of `chosen_ids` [batch, steps] (or [batch]) under the given per-step scores.

    `normalize` applies log_softmax (pass raw logits or processed scores); False takes the values as they are
    (already log-probabilities, as beam search's scores are).
    """
    stacked = stack_steps(scores_or_logits).float()
    if chosen_ids.dim() == 1:
        chosen_ids = chosen_ids[:, None]
    if chosen_ids.shape != stacked.shape[:2]:
        raise ValueError(f"chosen_ids has shape {tuple(chosen_ids.shape)} but the scores cover "
                         f"{tuple(stacked.shape[:2])} (batch, steps)")
    if top_n < 0 or top_n > stacked.shape[-1]:
        raise ValueError(f"top_n must be between 0 and the vocabulary size {stacked.shape[-1]}, got {top_n}")
    logprobs = torch.log_softmax(stacked, dim=-1) if normalize else stacked
    chosen_ids = chosen_ids.to(logprobs.device).long()
    chosen = logprobs.gather(-1, chosen_ids[..., None]).squeeze(-1)
    top_logprobs, top_ids = logprobs.topk(top_n, dim=-1) if top_n else (
        logprobs.new_empty(*logprobs.shape[:2], 0), chosen_ids.new_empty(*logprobs.shape[:2], 0))
    ranks = (logprobs > chosen[..., None]).sum(-1) + 1
    return TokenLogprobs(chosen=chosen, top_ids=top_ids, top_logprobs=top_logprobs, ranks=ranks)


def compute_transition_scores(sequences: torch.Tensor, scores: Sequence[torch.Tensor],
                              beam_indices: torch.Tensor | None = None,
                              normalize_logits: bool = False) -> torch.Tensor:
    """transformers' semantics: the score of each generated token [batch, generated], following beam
    ancestry when `beam_indices` is given; steps a beam did not take (it had finished) are 0."""
    if not scores:
        raise ValueError("no scores given: generate with output_scores=True (or pass output.logits)")
    stacked = torch.stack(tuple(scores), dim=1).float()  # [rows, steps, vocab]
    if normalize_logits:
        stacked = torch.log_softmax(stacked, dim=-1)
    if beam_indices is None:
        beam_indices = torch.arange(stacked.shape[0], device=sequences.device)[:, None].expand(-1, stacked.shape[1])
    finished = beam_indices < 0
    length = int((~finished).sum(-1).max())
    rows = beam_indices[:, :length].clamp(min=0).long()
    generated = sequences[:, sequences.shape[-1] - length:].long()
    steps = torch.arange(length, device=rows.device)[None, :].expand_as(rows)
    transition = stacked[rows, steps, generated]
    return transition.masked_fill(finished[:, :length], 0.0)
