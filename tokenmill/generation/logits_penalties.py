"""Logits processors that depend on the sequence's content: repetition penalty, no-repeat n-grams, sequence bias
and bad words. Each matches transformers' class of the same name; re-exported by `logits_process`.
"""

from __future__ import annotations

import numbers

import torch

from .logits_base import LogitsProcessor
from .sampling import apply_repetition_penalty


def _is_token_id(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 0


def _id_list(token_ids) -> list[int]:
    if isinstance(token_ids, torch.Tensor):
        return token_ids.reshape(-1).tolist()
    if isinstance(token_ids, numbers.Integral):
        return [int(token_ids)]
    return [int(t) for t in token_ids]



class RepetitionPenaltyLogitsProcessor(LogitsProcessor):
    """Penalise every token already in the sequence: negative scores are multiplied by `penalty`, others divided.

    `prompt_ignore_length` (an int, or one int per row) excludes that many leading tokens (e.g. left padding).
    """

    def __init__(self, penalty: float, prompt_ignore_length: int | torch.Tensor | None = None):
        if not isinstance(penalty, float) or not penalty > 0:
            raise ValueError(f"`penalty` has to be a strictly positive float, but is {penalty}")
        if isinstance(prompt_ignore_length, int) and prompt_ignore_length < 0:
            raise ValueError(f"`prompt_ignore_length` has to be a positive integer, but is {prompt_ignore_length}")
        if isinstance(prompt_ignore_length, torch.Tensor) and prompt_ignore_length.dim() != 1:
            raise ValueError("`prompt_ignore_length` must be 1D")
        self.penalty = penalty
        self.prompt_ignore_length = prompt_ignore_length

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        vocab = scores.shape[-1]
        ignore = self.prompt_ignore_length
        if isinstance(ignore, int):
            input_ids = input_ids[:, ignore:]
        elif isinstance(ignore, torch.Tensor):
            if input_ids.shape[0] != ignore.shape[0]:
                raise ValueError("Incompatible `prompt_ignore_length` batch size")
            ignore = ignore.to(input_ids.device)
            column = torch.arange(input_ids.shape[1], device=input_ids.device)
            input_ids = input_ids.masked_fill(column[None, :] < ignore[:, None], vocab)
        if input_ids.dim() == 1:
            input_ids = input_ids[:, None]
        return apply_repetition_penalty(scores, input_ids, self.penalty)


class NoRepeatNGramLogitsProcessor(LogitsProcessor):
    """Forbid any token that would repeat an n-gram (n = `ngram_size`) already present in the sequence."""

    def __init__(self, ngram_size: int):
        if not isinstance(ngram_size, int) or ngram_size <= 0:
            raise ValueError(f"`ngram_size` has to be a strictly positive integer, but is {ngram_size}")
        self.ngram_size = ngram_size

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        n = self.ngram_size
        length = input_ids.shape[-1]
        if length < n:
            return scores
        vocab = scores.shape[-1]
        # every n-gram whose first n-1 tokens equal the current last n-1 tokens bans its last token
        ngrams = input_ids.unfold(1, n, 1)  # [batch, length - n + 1, n]
        tail = input_ids[:, length - n + 1:]  # [batch, n - 1]
        hit = (ngrams[:, :, : n - 1] == tail[:, None, :]).all(dim=-1)
        banned_ids = torch.where(hit, ngrams[:, :, -1].clamp(max=vocab), vocab)
        banned = torch.zeros((scores.shape[0], vocab + 1), dtype=torch.bool, device=scores.device)
        banned.scatter_(1, banned_ids, True)
        return scores.masked_fill(banned[:, :vocab], -float("inf"))


class SequenceBiasLogitsProcessor(LogitsProcessor):
    """Add a bias to a token when it would complete a given token sequence.

    `sequence_bias`: a list of [token ids, bias] pairs (or, for backward compatibility, a dict of tuple -> bias).
    Single-token sequences are biased at every step; longer ones only when their prefix ends the sequence.
    """

    def __init__(self, sequence_bias):
        self.sequence_bias = sequence_bias
        self._validate_arguments()
        if isinstance(self.sequence_bias, list):
            self.sequence_bias = {tuple(ids): bias for ids, bias in self.sequence_bias}
        self.prepared_bias_variables = False
        self.length_1_bias = None
        self.multi_token_biases = None

    def _validate_arguments(self):
        bias = self.sequence_bias
        if not isinstance(bias, (dict, list)) or len(bias) == 0:
            raise ValueError(
                f"`sequence_bias` has to be a non-empty dictionary, or non-empty list of lists but is {bias}.")
        if isinstance(bias, dict):
            if any(not isinstance(ids, tuple) for ids in bias):
                raise ValueError(f"`sequence_bias` has to be a dict with tuples as keys, but is {bias}.")
            if any(len(ids) == 0 or not all(_is_token_id(t) for t in ids) for ids in bias):
                raise ValueError(
                    f"Each key in `sequence_bias` has to be a non-empty tuple of positive integers, but is {bias}.")
            if any(not isinstance(value, float) for value in bias.values()):
                raise ValueError(f"`sequence_bias` has to be a dict with floats as values, but is {bias}.")
        else:
            def valid(pair):
                return (isinstance(pair, list) and len(pair) > 0 and isinstance(pair[0], list)
                        and all(_is_token_id(t) for t in pair[0]) and len(pair) > 1 and isinstance(pair[1], float))

            if not all(valid(pair) for pair in bias):
                raise ValueError(
                    "Each element in `sequence_bias` has to be a non-empty list of lists of positive integers and "
                    f"float, but is {bias}.")

    def _prepare(self, scores: torch.Tensor) -> None:
        vocab, device = scores.shape[-1], scores.device
        out_of_range = [t for ids in self.sequence_bias for t in ids if t >= vocab]
        if out_of_range:
            raise ValueError(f"The model vocabulary size is {vocab}, but the following tokens were being biased: "
                             f"{out_of_range}")
        self.length_1_bias = torch.zeros(vocab, dtype=torch.float, device=device)
        singles = [(ids[0], bias) for ids, bias in self.sequence_bias.items() if len(ids) == 1]
        if singles:
            self.length_1_bias[[t for t, _ in singles]] = torch.tensor([b for _, b in singles], device=device)
        by_prefix_length: dict[int, list] = {}
        for ids, bias in self.sequence_bias.items():
            if len(ids) > 1:
                by_prefix_length.setdefault(len(ids) - 1, []).append((ids, bias))
        # per prefix length: (prefixes [k, L], last tokens [k], biases [k]) so a group matches in one comparison
        self.multi_token_biases = [
            (
                torch.tensor([list(ids[:-1]) for ids, _ in group], dtype=torch.long, device=device),
                torch.tensor([ids[-1] for ids, _ in group], dtype=torch.long, device=device),
                torch.tensor([bias for _, bias in group], dtype=torch.float, device=device),
            )
            for group in by_prefix_length.values()
        ]
        self.prepared_bias_variables = True

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        if not self.prepared_bias_variables:
            self._prepare(scores)
        bias = torch.zeros_like(scores)
        bias += self.length_1_bias
        for prefixes, last_tokens, biases in self.multi_token_biases:
            k = prefixes.shape[1]
            if k > input_ids.shape[1]:
                continue
            matched = (input_ids[:, None, -k:] == prefixes[None]).all(dim=-1)  # [batch, sequences]
            bias.index_add_(1, last_tokens, torch.where(matched, biases, 0.0).to(bias.dtype))
        return scores + bias


class NoBadWordsLogitsProcessor(SequenceBiasLogitsProcessor):
    """Forbid token sequences (`bad_words_ids`: a list of lists of ids); a bare EOS is never forbidden."""

    def __init__(self, bad_words_ids: list[list[int]], eos_token_id=None):
        self.bad_word_ids = bad_words_ids
        self._validate_bad_words()
        if eos_token_id is not None:
            eos = _id_list(eos_token_id)
            bad_words_ids = [seq for seq in bad_words_ids if not (len(seq) == 1 and seq[0] in eos)]
        super().__init__(sequence_bias={tuple(seq): float("-inf") for seq in bad_words_ids})

    def _validate_bad_words(self):
        ids = self.bad_word_ids
        if not isinstance(ids, list) or len(ids) == 0:
            raise ValueError(f"`bad_words_ids` has to be a non-empty list, but is {ids}.")
        if any(not isinstance(seq, list) for seq in ids):
            raise ValueError(f"`bad_words_ids` has to be a list of lists, but is {ids}.")
        if any(not all(_is_token_id(t) for t in seq) for seq in ids):
            raise ValueError(f"Each list in `bad_words_ids` has to be a list of positive integers, but is {ids}.")
