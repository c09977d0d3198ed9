"""Stopping criteria with transformers' class names and semantics, and `build_stopping_criteria`.

A criterion returns a BoolTensor [batch]: True where that row is done.

StopStringCriteria here does not precompute transformers' token/stop-string overlap tables. It decodes a short
window of each row's most recent tokens instead, which gives the same answer: a stop string matches when it
occurs in the decoded text *and* its occurrence reaches into the text contributed by the final token (so a stop
string generated earlier never re-triggers). The window is long enough for any stop string, since every token of
a byte-level / byte-fallback / plain vocabulary contributes at least one byte.
"""

from __future__ import annotations

import logging
import time
from copy import deepcopy

import torch

from .logits_process import merge_with_user_list

logger = logging.getLogger(__name__)

__all__ = [
    "EosTokenCriteria",
    "MaxLengthCriteria",
    "MaxTimeCriteria",
    "StopStringCriteria",
    "StoppingCriteria",
    "StoppingCriteriaList",
    "build_stopping_criteria",
    "validate_stopping_criteria",
]


class StoppingCriteria:
    """Base class: `__call__(input_ids [batch, seq], scores, **kwargs) -> BoolTensor [batch]` (True = stop)."""

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        raise NotImplementedError("StoppingCriteria needs to be subclassed")


class StoppingCriteriaList(list):
    """A list of criteria; calling it ORs their answers."""

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        for criterion in self:
            done = done | criterion(input_ids, scores, **kwargs)
        return done

    @property
    def max_length(self) -> int | None:
        for criterion in self:
            if isinstance(criterion, MaxLengthCriteria):
                return criterion.max_length
        return None


class MaxLengthCriteria(StoppingCriteria):
    """Stop once the sequence (prompt included) has `max_length` tokens."""

    def __init__(self, max_length: int, max_position_embeddings: int | None = None):
        self.max_length = max_length
        self.max_position_embeddings = max_position_embeddings
        self._warned = False

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        length = input_ids.shape[1]
        done = length >= self.max_length
        if (not done and self.max_position_embeddings is not None and length > self.max_position_embeddings
                and not self._warned):
            self._warned = True
            logger.warning("the sequence (%d tokens) exceeds the model's maximum length (%d)",
                           length, self.max_position_embeddings)
        return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)


class MaxTimeCriteria(StoppingCriteria):
    """Stop every row once `max_time` seconds have passed since `initial_timestamp` (default: construction)."""

    def __init__(self, max_time: float, initial_timestamp: float | None = None):
        self.max_time = max_time
        self.initial_timestamp = time.time() if initial_timestamp is None else initial_timestamp

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        done = time.time() - self.initial_timestamp > self.max_time
        return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)


class EosTokenCriteria(StoppingCriteria):
    """Stop a row when one of its last `new_token_length` tokens (default 1) is an EOS id."""

    def __init__(self, eos_token_id):
        if not isinstance(eos_token_id, torch.Tensor):
            eos_token_id = torch.tensor([eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id))
        self.eos_token_id = eos_token_id.reshape(-1)

    def __call__(self, input_ids: torch.LongTensor, scores, new_token_length: int = 1, **kwargs) -> torch.BoolTensor:
        if self.eos_token_id.device != input_ids.device:
            self.eos_token_id = self.eos_token_id.to(input_ids.device)
        return torch.isin(input_ids[:, -new_token_length:], self.eos_token_id).any(dim=-1)


class StopStringCriteria(StoppingCriteria):
    """Stop a row when its decoded text contains one of `stop_strings` overlapping the final token.

    Matches like transformers: ["st", "op"], ["stop"], ["las", "topper"] all end with "stop"; ["stop", "at"] does
    not (the stop string was complete before the final token). Needs a tokenizer with `decode(ids)`.
    """

    def __init__(self, tokenizer, stop_strings: str | list[str]):
        if isinstance(stop_strings, str):
            stop_strings = [stop_strings]
        stop_strings = tuple(stop_strings)
        if not stop_strings or not all(isinstance(s, str) and s for s in stop_strings):
            raise ValueError(f"`stop_strings` must be non-empty strings, got {stop_strings!r}")
        if not callable(getattr(tokenizer, "decode", None)):
            raise TypeError("StopStringCriteria needs a tokenizer with a decode(ids) method")
        self.tokenizer = tokenizer
        self.stop_strings = stop_strings
        # a token contributes >= 1 byte, so the tokens overlapping a stop string are among the last len(bytes);
        # one more token gives decoders that strip a leading space (SentencePiece) the context they need
        self.window = max(len(s.encode("utf-8")) for s in stop_strings) + 1
        self._longest = max(len(s) for s in stop_strings)

    def _row_matches(self, ids: list[int]) -> bool:
        if not ids:
            return False
        text = self.tokenizer.decode(ids)
        if not any(s in text for s in self.stop_strings):
            return False
        before = self.tokenizer.decode(ids[:-1]) if len(ids) > 1 else ""
        # the text that was already there before the final token: the common prefix (a trailing partial
        # character, decoded as U+FFFD, is not common once the final token completes it)
        stable = 0
        limit = min(len(before), len(text))
        while stable < limit and before[stable] == text[stable]:
            stable += 1
        for stop in self.stop_strings:
            # an occurrence must end after `stable`, i.e. start after stable - len(stop)
            if text.find(stop, max(0, stable - len(stop) + 1)) != -1:
                return True
        return False

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        tails = input_ids[:, -self.window:].tolist()
        done = [self._row_matches(row) for row in tails]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


def build_stopping_criteria(
    generation_config,
    tokenizer=None,
    user_criteria: StoppingCriteriaList | None = None,
    *,
    max_position_embeddings: int | None = None,
) -> StoppingCriteriaList:
    """The criteria a GenerationConfig asks for, in transformers' order (max_length, max_time, stop_strings, eos),
    then the user's criteria merged as transformers does (same type: the user's replaces the default in place).

    `generation_config.max_length` must already be the final length (prompt + max_new_tokens) when set.
    stop_strings without a tokenizer raise ValueError.
    """
    gc = generation_config
    criteria = StoppingCriteriaList()
    if gc.max_length is not None:
        criteria.append(MaxLengthCriteria(gc.max_length, max_position_embeddings=max_position_embeddings))
    if gc.max_time is not None:
        criteria.append(MaxTimeCriteria(gc.max_time))
    if gc.stop_strings is not None:
        if tokenizer is None:
            raise ValueError(
                "stop_strings are set (in the generate() arguments or the model's generation config) but no "
                "tokenizer was given: pass the model's tokenizer to generate(tokenizer=...) to use stop strings"
            )
        criteria.append(StopStringCriteria(tokenizer, gc.stop_strings))
    eos = getattr(gc, "_eos_token_tensor", None)
    if eos is None and gc.eos_token_id is not None:
        eos = gc.eos_token_id
    if eos is not None:
        criteria.append(EosTokenCriteria(eos))
    return merge_with_user_list(criteria, user_criteria or [], "stopping criteria")


def validate_stopping_criteria(criteria: StoppingCriteriaList, max_length: int) -> StoppingCriteriaList:
    """A copy of `criteria` that includes a MaxLengthCriteria (added when missing)."""
    found = criteria.max_length
    result = deepcopy(criteria)
    if found is not None and found != max_length:
        logger.warning("the stopping criteria's max_length (%s) differs from max_length (%s)", found, max_length)
    elif found is None:
        result.append(MaxLengthCriteria(max_length))
    return result
