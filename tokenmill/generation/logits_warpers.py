"""The sampling-only processors ("warpers"): temperature and the truncation rules top-k, top-p, min-p, typical,
epsilon, eta and top-h. Each matches transformers' class of the same name, including ties and -inf inputs.

All are batched tensor code: one sort / top-k per call, no host synchronisation. Temperature, top-k, top-p, min-p
and typical hold their parameters and call `sampling.py`, whose arithmetic the serving engine shares.
"""

from __future__ import annotations

import numbers

import torch

from .logits_base import LogitsProcessor
from .sampling import apply_min_p, apply_temperature, apply_top_k, apply_top_p, apply_typical

NEG_INF = -float("inf")


def _check_min_tokens(min_tokens_to_keep) -> int:
    if not isinstance(min_tokens_to_keep, numbers.Integral) or isinstance(min_tokens_to_keep, bool) \
            or min_tokens_to_keep < 1:
        raise ValueError(f"`min_tokens_to_keep` has to be a positive integer, but is {min_tokens_to_keep}")
    return int(min_tokens_to_keep)


def _kth_largest(scores: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th largest score of each row, shaped [batch, 1] (k is clipped to the vocabulary)."""
    k = min(k, scores.shape[-1])
    return torch.topk(scores, k, dim=-1).values[..., -1:]


class TemperatureLogitsWarper(LogitsProcessor):
    """Divide the scores by `temperature` (> 0): below 1 sharpens the distribution, above 1 flattens it."""

    def __init__(self, temperature: float):
        # transformers insists on a Python float; an int temperature is accepted here and converted
        if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real) or not temperature > 0:
            message = (f"`temperature` (={temperature}) has to be a strictly positive float, otherwise your next "
                       "token scores will be invalid.")
            if isinstance(temperature, numbers.Real) and temperature == 0:
                message += " If you're looking for greedy decoding strategies, set `do_sample=False`."
            raise ValueError(message)
        self.temperature = float(temperature)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        return apply_temperature(scores, self.temperature)


class TopKLogitsWarper(LogitsProcessor):
    """Keep the `top_k` highest scores of each row (all tied with the k-th are kept); filter the rest."""

    def __init__(self, top_k: int, filter_value: float = NEG_INF, min_tokens_to_keep: int = 1):
        if not isinstance(top_k, numbers.Integral) or isinstance(top_k, bool) or top_k <= 0:
            raise ValueError(f"`top_k` has to be a strictly positive integer, but is {top_k}")
        self.top_k = max(int(top_k), min_tokens_to_keep)
        self.filter_value = filter_value
        self.min_tokens_to_keep = min_tokens_to_keep

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        return apply_top_k(scores, self.top_k, filter_value=self.filter_value)


class TopPLogitsWarper(LogitsProcessor):
    """Nucleus sampling: keep the smallest set of most likely tokens whose probability mass reaches `top_p`."""

    def __init__(self, top_p: float, filter_value: float = NEG_INF, min_tokens_to_keep: int = 1):
        top_p = float(top_p)
        if not 0.0 <= top_p <= 1.0:
            raise ValueError(f"`top_p` has to be a float > 0 and < 1, but is {top_p}")
        self.min_tokens_to_keep = _check_min_tokens(min_tokens_to_keep)
        self.top_p = top_p
        self.filter_value = filter_value

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        return apply_top_p(scores, self.top_p, self.min_tokens_to_keep, self.filter_value)


class MinPLogitsWarper(LogitsProcessor):
    """Drop tokens whose probability is below `min_p` times the probability of the most likely token."""

    def __init__(self, min_p: float, filter_value: float = NEG_INF, min_tokens_to_keep: int = 1):
        if not 0 <= min_p <= 1.0:
            raise ValueError(f"`min_p` has to be a float in the [0, 1] interval, but is {min_p}")
        self.min_tokens_to_keep = _check_min_tokens(min_tokens_to_keep)
        self.min_p = min_p
        self.filter_value = filter_value

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        return apply_min_p(scores, self.min_p, self.min_tokens_to_keep, self.filter_value)


class TypicalLogitsWarper(LogitsProcessor):
    """Locally typical sampling: keep the tokens whose surprisal is closest to the entropy, up to mass `mass`."""

    def __init__(self, mass: float = 0.9, filter_value: float = NEG_INF, min_tokens_to_keep: int = 1):
        mass = float(mass)
        if not 0 < mass < 1:
            raise ValueError(f"`typical_p` has to be a float > 0 and < 1, but is {mass}")
        self.min_tokens_to_keep = _check_min_tokens(min_tokens_to_keep)
        self.mass = mass
        self.filter_value = filter_value

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        return apply_typical(scores, self.mass, self.min_tokens_to_keep, self.filter_value)


class EpsilonLogitsWarper(LogitsProcessor):
    """Drop tokens whose probability is below `epsilon` (keeping the `min_tokens_to_keep` best)."""

    def __init__(self, epsilon: float, filter_value: float = NEG_INF, min_tokens_to_keep: int = 1):
        epsilon = float(epsilon)
        if not 0 < epsilon < 1:
            raise ValueError(f"`epsilon_cutoff` has to be a float > 0 and < 1, but is {epsilon}")
        min_tokens_to_keep = int(min_tokens_to_keep)
        if min_tokens_to_keep < 1:
            raise ValueError(f"`min_tokens_to_keep` has to be a strictly positive integer, but is {min_tokens_to_keep}")
        self.epsilon = epsilon
        self.filter_value = filter_value
        self.min_tokens_to_keep = min_tokens_to_keep

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        drop = scores.softmax(dim=-1) < self.epsilon
        drop &= scores < _kth_largest(scores, self.min_tokens_to_keep)
        return scores.masked_fill(drop, self.filter_value)


class EtaLogitsWarper(LogitsProcessor):
    """Eta sampling: drop tokens below min(eta, sqrt(eta) * exp(-entropy)) (keeping the `min_tokens_to_keep` best)."""

    def __init__(self, epsilon: float, filter_value: float = NEG_INF, min_tokens_to_keep: int = 1,
                 device: str = "cpu"):
        epsilon = float(epsilon)
        if not 0 < epsilon < 1:
            raise ValueError(f"`eta_cutoff` has to be a float > 0 and < 1, but is {epsilon}")
        min_tokens_to_keep = int(min_tokens_to_keep)
        if min_tokens_to_keep < 1:
            raise ValueError(f"`min_tokens_to_keep` has to be a strictly positive integer, but is {min_tokens_to_keep}")
        self.epsilon = torch.tensor(epsilon, device=device)
        self.filter_value = filter_value
        self.min_tokens_to_keep = min_tokens_to_keep

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        probs = scores.softmax(dim=-1)
        # entropy as torch.distributions.Categorical computes it (-inf log-probs clamped so 0 * log 0 == 0)
        logp = scores - scores.logsumexp(dim=-1, keepdim=True)
        logp = logp.clamp(min=torch.finfo(logp.dtype).min)
        entropy = -(logp * probs).sum(-1)
        epsilon = self.epsilon.to(scores.device)
        eta = torch.minimum(epsilon, epsilon.sqrt() * torch.exp(-entropy))[..., None]
        drop = (probs < eta) & (scores < _kth_largest(scores, self.min_tokens_to_keep))
        return scores.masked_fill(drop, self.filter_value)


class TopHLogitsWarper(LogitsProcessor):
    """Top-H: among the 100 best tokens, keep the most likely ones while their cumulative entropy stays within
    `top_h` times the entropy of that top-100 distribution (the best token is always kept)."""

    def __init__(self, top_h: float, filter_value: float = NEG_INF):
        if not 0 < top_h <= 1:
            raise ValueError("`top_h` must be in the range (0, 1].")
        self.top_n = 100
        self.top_h = top_h
        self.filter_value = filter_value

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        n = min(self.top_n, scores.shape[-1])
        best, best_idx = torch.topk(scores, n, dim=-1, largest=True, sorted=True)
        logp = best - best.logsumexp(dim=-1, keepdim=True)
        probs = logp.softmax(dim=-1)
        clamped = logp.clamp(min=torch.finfo(logp.dtype).min)
        tau = (-(clamped * probs).sum(-1) * self.top_h)[:, None]
        cumulative = torch.cumsum(-probs * torch.log(probs), dim=-1)
        keep_sorted = cumulative <= tau
        keep_sorted[:, 0] = True
        keep = torch.zeros_like(scores, dtype=torch.bool).scatter_(1, best_idx, keep_sorted)
        return scores.masked_fill(~keep, self.filter_value)
