"""The sampling arithmetic shared by generate()'s processors and the serving engine's sampler: repetition
penalty, temperature, top-k, top-p, min-p and typical, then the draw.

Every function is batched over rows [rows, vocab] and takes its parameter either as a Python number (every row
the same: the exact arithmetic of transformers' class of the same role) or as a tensor [rows] (one value per
row, each row processed as that class would process it alone). A row whose value means "off" (penalty 1,
temperature 1, top_k 0, top_p 1, min_p 0, typical_p 1) comes back unchanged. `min_tokens_to_keep` too is an
int or a tensor [rows]. `warp` applies the warpers in the order transformers' generate() builds them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

NEG_INF = -float("inf")

Param = float | int | torch.Tensor


def _column(value: Param, scores: torch.Tensor, dtype: torch.dtype | None = None):
    """A per-row tensor as [rows, 1] in `dtype` (default: the scores'); a Python number stays as it is, so
    torch applies it exactly as transformers' scalar arithmetic does."""
    if isinstance(value, torch.Tensor):
        return value.to(device=scores.device, dtype=dtype or scores.dtype).reshape(-1, 1)
    return value


def _keep_first(mask_sorted: torch.Tensor, count: int | torch.Tensor, from_end: bool = False) -> torch.Tensor:
    """Clear a sorted drop mask over each row's first (or last) `count` positions: those tokens always stay."""
    if not isinstance(count, torch.Tensor):
        if from_end:
            mask_sorted[..., -count:] = False
        else:
            mask_sorted[..., :count] = False
        return mask_sorted
    position = torch.arange(mask_sorted.shape[-1], device=mask_sorted.device)
    if from_end:
        position = mask_sorted.shape[-1] - 1 - position
    return mask_sorted & (position[None, :] >= count.to(mask_sorted.device).reshape(-1, 1))


def _only_rows(mask: torch.Tensor, active: torch.Tensor | None) -> torch.Tensor:
    return mask if active is None else mask & active.to(mask.device).reshape(-1, 1)


def apply_repetition_penalty(scores: torch.Tensor, token_ids: torch.Tensor, penalty: Param) -> torch.Tensor:
    """The tokens of each row's `token_ids` [rows, n] (ids outside [0, vocab) are padding, ignored): negative
    scores multiplied by the penalty, others divided; every other score untouched."""
    rows, vocab = scores.shape
    token_ids = token_ids.to(scores.device)
    # padding lands in a spare column that is dropped; only the n listed scores are computed
    ids = torch.where((token_ids >= 0) & (token_ids < vocab), token_ids, vocab)
    extended = torch.cat([scores, scores.new_zeros(rows, 1)], dim=1)
    picked = extended.gather(1, ids)
    penalty = _column(penalty, scores)
    extended.scatter_(1, ids, torch.where(picked < 0, picked * penalty, picked / penalty))
    return extended[:, :vocab]


def apply_temperature(scores: torch.Tensor, temperature: Param) -> torch.Tensor:
    return scores / _column(temperature, scores)


def apply_top_k(scores: torch.Tensor, top_k: Param, min_tokens_to_keep: Param = 1,
                filter_value: float = NEG_INF) -> torch.Tensor:
    """Keep each row's max(top_k, min_tokens_to_keep) best scores and every score tied with the last of them."""
    vocab = scores.shape[-1]
    if not isinstance(top_k, torch.Tensor) and not isinstance(min_tokens_to_keep, torch.Tensor):
        if top_k == 0:
            return scores
        threshold = torch.topk(scores, min(max(int(top_k), int(min_tokens_to_keep)), vocab)).values[..., -1:]
        return scores.masked_fill(scores < threshold, filter_value)
    top_k = torch.as_tensor(top_k, device=scores.device).expand(scores.shape[0])
    active = top_k > 0
    k = torch.clamp(torch.maximum(top_k, torch.as_tensor(min_tokens_to_keep, device=scores.device)), max=vocab)
    if not bool(active.any()):
        return scores
    rows = active.nonzero()[:, 0]
    # the k-th largest value does not depend on k_max; rows with top-k off keep a -inf threshold
    best = torch.topk(scores[rows], int(k[rows].max())).values
    threshold = torch.full((scores.shape[0], 1), NEG_INF, dtype=scores.dtype, device=scores.device)
    threshold[rows] = best.gather(1, (k[rows] - 1).reshape(-1, 1))
    return scores.masked_fill(scores < threshold, filter_value)


def apply_top_p(scores: torch.Tensor, top_p: Param, min_tokens_to_keep: Param = 1,
                filter_value: float = NEG_INF) -> torch.Tensor:
    """Nucleus: drop the least likely tokens whose cumulative mass stays within 1 - top_p (so the token that
    crosses the threshold is kept), never the `min_tokens_to_keep` most likely."""
    ascending, order = torch.sort(scores, descending=False)
    mass_below = ascending.softmax(dim=-1).cumsum(dim=-1)
    if isinstance(top_p, torch.Tensor):
        top_p = top_p.to(device=scores.device, dtype=torch.float64)
        # 1 - top_p in double, rounded once to the scores' dtype, as a Python float would be compared
        drop_sorted = _only_rows(mass_below <= _column(1 - top_p, scores), top_p < 1)
    else:
        drop_sorted = mass_below <= (1 - top_p)
    drop_sorted = _keep_first(drop_sorted, min_tokens_to_keep, from_end=True)
    drop = torch.zeros_like(drop_sorted).scatter(1, order, drop_sorted)
    return scores.masked_fill(drop, filter_value)


def apply_min_p(scores: torch.Tensor, min_p: Param, min_tokens_to_keep: Param = 1,
                filter_value: float = NEG_INF) -> torch.Tensor:
    """Drop tokens less likely than min_p times the row's most likely token (keeping the best
    `min_tokens_to_keep`)."""
    probs = scores.softmax(dim=-1)
    drop = probs < _column(min_p, scores) * probs.amax(dim=-1, keepdim=True)
    if isinstance(min_tokens_to_keep, torch.Tensor):
        count = min_tokens_to_keep.to(scores.device).clamp(max=probs.shape[-1])
        best = torch.topk(probs, int(count.max()), dim=-1).indices
        kept = torch.arange(best.shape[-1], device=scores.device)[None, :] < count.reshape(-1, 1)
        drop.scatter_(-1, best, drop.gather(-1, best) & ~kept)
    else:
        drop.scatter_(-1, torch.topk(probs, min(int(min_tokens_to_keep), probs.shape[-1]), dim=-1).indices, False)
    return scores.masked_fill(drop, filter_value)


def apply_typical(scores: torch.Tensor, mass: Param, min_tokens_to_keep: Param = 1,
                  filter_value: float = NEG_INF) -> torch.Tensor:
    """Locally typical: keep the tokens whose surprisal is closest to the entropy until their mass reaches
    `mass` (the token that crosses it, and every token as close, kept)."""
    logp = torch.log_softmax(scores, dim=-1)
    entropy = -(logp * logp.exp()).nansum(-1, keepdim=True)
    distance_sorted, order = torch.sort((-logp - entropy).abs(), descending=False)
    mass_so_far = scores.gather(-1, order).softmax(dim=-1).cumsum(dim=-1)
    cutoff = (mass_so_far < _column(mass, scores)).sum(dim=1).clamp_(max=distance_sorted.shape[-1] - 1)
    drop_sorted = distance_sorted > distance_sorted.gather(1, cutoff[:, None])
    drop_sorted = _keep_first(drop_sorted, min_tokens_to_keep)
    if isinstance(mass, torch.Tensor):
        drop_sorted = _only_rows(drop_sorted, mass < 1)
    drop = torch.zeros_like(drop_sorted).scatter(1, order, drop_sorted)
    return scores.masked_fill(drop, filter_value)


@dataclass
class Warpers:
    """The sampling-only transforms, each a number (all rows), a tensor [rows] (per row) or None (off)."""

    temperature: Param | None = None
    top_k: Param | None = None
    top_p: Param | None = None
    min_p: Param | None = None
    typical_p: Param | None = None
    min_tokens_to_keep: Param = 1

    @classmethod
    def per_row(cls, temperature: list[float], top_k: list[int], top_p: list[float], min_p: list[float],
                typical_p: list[float], min_tokens_to_keep: int = 1) -> "Warpers":
        """One value per row; a transform that is off for every row is left out (None)."""
        def column(values, off, dtype):
            return torch.tensor(values, dtype=dtype) if any(v != off for v in values) else None

        return cls(column(temperature, 1.0, torch.float32), column(top_k, 0, torch.long),
                   column(top_p, 1.0, torch.float64), column(min_p, 0.0, torch.float32),
                   column(typical_p, 1.0, torch.float32), min_tokens_to_keep)

    def __call__(self, scores: torch.Tensor) -> torch.Tensor:
        """transformers' order: temperature, top-k, top-p, min-p, typical."""
        keep = self.min_tokens_to_keep
        if self.temperature is not None:
            scores = apply_temperature(scores, self.temperature)
        if self.top_k is not None:
            scores = apply_top_k(scores, self.top_k, keep)
        if self.top_p is not None:
            scores = apply_top_p(scores, self.top_p, keep)
        if self.min_p is not None:
            scores = apply_min_p(scores, self.min_p, keep)
        if self.typical_p is not None:
            scores = apply_typical(scores, self.typical_p, keep)
        return scores


def draw(probs: torch.Tensor, generators: list[torch.Generator | None] | None = None) -> torch.Tensor:
    """One token id per row, as torch.multinomial(probs, 1) draws it. With `generators` each row draws from
    its own (None: torch's global one), so a row's token never depends on the other rows of the batch."""
    if generators is None:
        return torch.multinomial(probs, num_samples=1)[:, 0]
    return torch.cat([torch.multinomial(row, 1, generator=generator) for row, generator in zip(probs, generators)])
