"""Kirchenbauer et al. (2023) green-list watermarking and its detector, interoperable with transformers'.

At each step the previous token(s) seed a pseudo-random permutation of the vocabulary; its first
`greenlist_ratio` share is the green list, whose logits get `+bias`. A detector recomputes the green lists
and counts green tokens: a z-score well above 0 means watermarked text. The seeding (a fixed random table of
1,000,003 entries drawn from `hashing_key`, then `torch.randperm` per step) is the one transformers uses, so
text watermarked here is detected by transformers' WatermarkDetector and vice versa.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass
from functools import lru_cache

import numpy as np
import torch

from .logits_process import LogitsProcessor

TABLE_SIZE = 1_000_003


@dataclass
class WatermarkingConfig:
    greenlist_ratio: float = 0.25
    bias: float = 2.0
    hashing_key: int = 15485863
    seeding_scheme: str = "lefthash"  # "lefthash": previous token; "selfhash": context + candidate token
    context_width: int = 1

    def validate(self) -> None:
        if self.seeding_scheme not in ("lefthash", "selfhash"):
            raise ValueError(f"seeding_scheme must be 'lefthash' or 'selfhash', got {self.seeding_scheme!r}")
        if not 0.0 < self.greenlist_ratio < 1.0:
            raise ValueError(f"greenlist_ratio must be strictly between 0 and 1, got {self.greenlist_ratio}")
        if int(self.context_width) < 1:
            raise ValueError(f"context_width must be a positive integer, got {self.context_width}")

    @classmethod
    def coerce(cls, value) -> "WatermarkingConfig":
        """Accept this class, a dict of its fields, or any object with those attributes (transformers' config)."""
        if isinstance(value, cls):
            config = value
        elif isinstance(value, dict):
            config = cls(**{key: value[key] for key in asdict(cls()) if key in value})
        else:
            config = cls(**{key: getattr(value, key) for key in asdict(cls()) if hasattr(value, key)})
        config.validate()
        return config


class GreenList:
    """The green list of a context: the seeded permutation's first greenlist_size token ids."""

    def __init__(self, vocab_size: int, config: WatermarkingConfig, device="cpu"):
        self.vocab_size, self.config = vocab_size, config
        self.size = int(vocab_size * config.greenlist_ratio)
        self.rng = torch.Generator(device=device)
        self.rng.manual_seed(config.hashing_key)
        self.table = torch.randperm(TABLE_SIZE, generator=self.rng, device=device)

    def seed_for(self, context: torch.Tensor) -> int:
        context = context[-self.config.context_width:]
        if self.config.seeding_scheme == "selfhash":
            left = self.table[context % TABLE_SIZE] + 1
            last = self.table[context[-1] % TABLE_SIZE] + 1
            seed = int((self.config.hashing_key * left * last).min())
        else:
            seed = self.config.hashing_key * int(context[-1])
        return seed % (2 ** 64 - 1)

    def ids(self, context: torch.Tensor) -> torch.Tensor:
        self.rng.manual_seed(self.seed_for(context))
        return torch.randperm(self.vocab_size, device=context.device, generator=self.rng)[:self.size]


class WatermarkLogitsProcessor(LogitsProcessor):
    def __init__(self, vocab_size: int, device="cpu", **config):
        self.config = WatermarkingConfig.coerce(config)
        self.green = GreenList(vocab_size, self.config, device)

    @classmethod
    def from_config(cls, watermarking_config, vocab_size: int, device="cpu") -> "WatermarkLogitsProcessor":
        return cls(vocab_size, device, **asdict(WatermarkingConfig.coerce(watermarking_config)))

    def _selfhash_green(self, context: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """selfhash: a candidate is green if it is in the green list seeded by context + itself (top 40 tried)."""
        ranked = scores.argsort(descending=True)[:40]
        green = [token for token in ranked if bool((self.green.ids(torch.cat([context, token[None]])) == token).any())]
        return torch.stack(green) if green else ranked.new_empty(0)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if input_ids.shape[-1] < self.config.context_width:
            return scores  # not enough context to seed from
        watermarked = scores.clone()
        for row, context in enumerate(input_ids):
            if self.config.seeding_scheme == "selfhash":
                green = self._selfhash_green(context, scores[row])
            else:
                green = self.green.ids(context)
            watermarked[row, green] += self.config.bias
        return watermarked


@dataclass
class WatermarkDetection:
    num_tokens_scored: np.ndarray
    num_green_tokens: np.ndarray
    green_fraction: np.ndarray
    z_score: np.ndarray
    p_value: np.ndarray
    prediction: np.ndarray
    confidence: np.ndarray


class WatermarkDetector:
    """Counts green tokens in (batch of) token ids and turns the count into a one-sided z-test."""

    def __init__(self, vocab_size: int, bos_token_id: int | None, watermarking_config=None,
                 ignore_repeated_ngrams: bool = False, device="cpu", max_cache_size: int = 128):
        self.config = WatermarkingConfig.coerce(watermarking_config or WatermarkingConfig())
        self.bos_token_id = bos_token_id
        self.ignore_repeated_ngrams = ignore_repeated_ngrams
        self.green = GreenList(vocab_size, self.config, device)
        self._is_green = lru_cache(maxsize=max_cache_size)(self._is_green_uncached)

    def _is_green_uncached(self, ngram: tuple[int, ...]) -> bool:
        selfhash = self.config.seeding_scheme == "selfhash"
        context = torch.tensor(ngram if selfhash else ngram[:-1])
        return bool((self.green.ids(context) == ngram[-1]).any())

    def _count(self, row: list[int]) -> tuple[int, int]:
        width = self.config.context_width + (0 if self.config.seeding_scheme == "selfhash" else 1)
        ngrams = Counter(tuple(row[i:i + width]) for i in range(len(row) - width + 1))
        if self.ignore_repeated_ngrams:
            return len(ngrams), sum(self._is_green(ngram) for ngram in ngrams)
        return sum(ngrams.values()), sum(count * self._is_green(ngram) for ngram, count in ngrams.items())

    def __call__(self, input_ids: torch.Tensor, z_threshold: float = 3.0, return_dict: bool = False):
        if input_ids.dim() == 1:
            input_ids = input_ids[None]
        if self.bos_token_id is not None:
            has_bos = input_ids[:, 0] == self.bos_token_id
            if bool(has_bos.any()) != bool(has_bos.all()):
                raise ValueError("some rows start with bos and some do not: tokenize them the same way")
            if bool(has_bos.all()):
                input_ids = input_ids[:, 1:]
        if input_ids.shape[-1] - self.config.context_width < 1:
            raise ValueError(f"need at least {self.config.context_width + 1} tokens to score a watermark, "
                             f"got {input_ids.shape[-1]}")
        counts = [self._count(row) for row in input_ids.tolist()]
        scored = np.array([c[0] for c in counts], dtype=np.float64)
        green = np.array([c[1] for c in counts], dtype=np.float64)
        ratio = self.config.greenlist_ratio
        z = (green - ratio * scored) / np.sqrt(scored * ratio * (1 - ratio))
        prediction = z > z_threshold
        if not return_dict:
            return prediction
        p_value = np.array([0.5 * math.erfc(value / math.sqrt(2)) for value in z])
        return WatermarkDetection(num_tokens_scored=scored, num_green_tokens=green, green_fraction=green / scored,
                                  z_score=z, p_value=p_value, prediction=prediction, confidence=1 - p_value)
