"""One sequence being generated: its tokens, its KV blocks, how far the model has processed it, and why it ended."""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field

import torch

from .sampling_params import SamplingParams


class SequenceStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass
class TokenLogprob:
    token_id: int
    logprob: float
    top: list[tuple[int, float]]  # alternatives, most likely first


@dataclass
class Sequence:
    request_id: str
    index: int  # which of the request's n choices
    prompt_token_ids: list[int]
    params: SamplingParams
    arrival_time: float = field(default_factory=time.monotonic)
    output_token_ids: list[int] = field(default_factory=list)
    output_logprobs: list[TokenLogprob] = field(default_factory=list)
    prompt_logprobs: list[TokenLogprob | None] | None = None
    status: SequenceStatus = SequenceStatus.WAITING
    block_table: list[int] = field(default_factory=list)
    block_hashes: list[int] = field(default_factory=list)  # hashes of the leading full blocks
    num_computed_tokens: int = 0  # tokens whose K/V are in the cache
    num_cached_prompt_tokens: int = 0  # of which came from the prefix cache
    finish_reason: str | None = None  # "stop" | "length" | "abort" | "error"
    stop_text: str | None = None  # the stop string that ended it, if any
    error: str | None = None
    generator: torch.Generator | None = None
    num_preemptions: int = 0
    first_token_time: float | None = None
    prefix_root: int | None = None  # where its prefix-cache hash chain starts: one root per adapter (KV differs)
    draft_token_ids: list[int] = field(default_factory=list)  # this step's speculative guesses, not yet verified

    @property
    def seq_id(self) -> tuple[str, int]:
        return (self.request_id, self.index)

    @property
    def all_token_ids(self) -> list[int]:
        return self.prompt_token_ids + self.output_token_ids

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_token_ids) + len(self.output_token_ids)

    @property
    def num_uncomputed_tokens(self) -> int:
        return self.num_tokens - self.num_computed_tokens

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED

    @property
    def in_prefill(self) -> bool:
        return self.num_computed_tokens < len(self.prompt_token_ids)

    def reset_for_recompute(self) -> None:
        """Preemption by recompute: drop every cached position; prompt + outputs are prefilled again."""
        self.block_table = []
        self.block_hashes = []
        self.num_computed_tokens = 0
        self.draft_token_ids = []
        self.status = SequenceStatus.WAITING
        self.num_preemptions += 1
