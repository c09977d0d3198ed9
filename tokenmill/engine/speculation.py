"""Speculative decoding inside the engine: prompt-lookup (n-gram) or draft-model drafts, verified in the same step.

Before a step, each decoding sequence that opted in (or the engine's default) gets drafts: the tokens that
followed an earlier occurrence of its last n tokens (`generation/drafters.py`, the drafter generate() uses), or
a draft model's greedy continuation (`draft_model.py`).
The scheduler runs them as extra query positions of that sequence's chunk, like a short prefill chunk, so one
forward yields logits after the last token and after every draft. Verification then picks tokens exactly as
the non-speculative engine would, one position at a time (same sampler, same seeded generator, same stop
checks) and keeps going while the picked token equals the draft: greedy output is unchanged, and a sampled
token is a draw from the target distribution (a deterministic drafter keeps the distribution exact). The KV
of rejected drafts is rolled back: the sequence's computed length ends at the last accepted draft and the
blocks past it go back to the pool, so the cache is the one the non-speculative engine would hold.
"""

from __future__ import annotations

from typing import Callable

import torch

from ..generation.drafters import PromptLookupDrafter
from .block_manager import BlockManager
from .draft_model import DraftModelError, DraftModelProposer
from .sampler import NO_TOKEN, needs_slow_path
from .scheduler import ScheduledChunk, Scheduler
from .sequence import Sequence
from .spec_params import SpeculativeConfig


def draft_limit(seq: Sequence, config: SpeculativeConfig, max_model_len: int) -> int:
    """How many drafts may run: the token chosen after the drafts needs room under max_tokens and the context."""
    left = min(seq.params.max_tokens - len(seq.output_token_ids), max_model_len - seq.num_tokens)
    return min(config.num_speculative_tokens, left - 1)


def propose_drafts(seq: Sequence, config: SpeculativeConfig, max_model_len: int, budget: int,
                   draft_model: DraftModelProposer | None = None) -> list[int]:
    """At most `budget` drafts (what is left of the step's speculative token budget)."""
    limit = min(draft_limit(seq, config, max_model_len), budget)
    if limit <= 0:
        return []
    if config.method == "draft_model":
        return draft_model.propose(seq, limit)
    drafter = PromptLookupDrafter(config.num_speculative_tokens, config.prompt_lookup_max, config.prompt_lookup_min)
    drafts, _ = drafter.propose(torch.tensor([seq.all_token_ids], dtype=torch.long), limit)
    return drafts[0].tolist()


def release_blocks_past(seq: Sequence, blocks: BlockManager) -> None:
    """Free the blocks beyond what the sequence's computed tokens fill (they held only rejected drafts)."""
    keep = blocks.blocks_needed(seq.num_computed_tokens)
    blocks.free_all(seq.block_table[keep:])
    del seq.block_table[keep:]


class Speculator:
    """Drafts before a step, verifies after it, and counts drafted and accepted tokens."""

    def __init__(self, default: SpeculativeConfig | None = None, step_tokens: int = 8,
                 draft_model: DraftModelProposer | None = None):
        self.draft_model = draft_model
        self.default = default if default is not None and default.enabled else None
        if self.default is not None:
            self.check(self.default)
        # a step runs every row as wide as its widest (one row per decoding sequence, 1 + its drafts): drafts go
        # only while rows x width stays within this many positions: below it a CPU step is bound by reading the
        # weights (more positions come nearly free), above it by arithmetic (each padded position costs its share)
        self.step_tokens = step_tokens
        self.draft_tokens = 0  # drafts run through the model
        self.accepted_tokens = 0  # of which the target model agreed with
        self.verify_steps = 0  # sequence-steps that verified at least one draft

    def check(self, config: SpeculativeConfig | None) -> None:
        """Refuse a request (or default) for draft-model drafts where the engine has no draft model."""
        if config is not None and config.enabled and config.method == "draft_model" and self.draft_model is None:
            raise DraftModelError("speculative.method 'draft_model' needs a draft model: this engine has none "
                                  "(serve --draft-model PATH, or LLM(..., draft_model=...))")

    def config_of(self, seq: Sequence) -> SpeculativeConfig | None:
        config = seq.params.speculative if seq.params.speculative is not None else self.default
        return config if config is not None and config.enabled else None

    def propose(self, running: list[Sequence], max_model_len: int) -> None:
        """Give decoding sequences that speculate their drafts for the coming step: each at most
        step_tokens // (decoding sequences) - 1, and none while a prompt is still being read (its rows already
        make the step compute-bound)."""
        live = [seq for seq in running if not seq.is_finished]
        if self.draft_model is not None:
            self.draft_model.keep_only(live)
        if not live or any(seq.num_uncomputed_tokens > 1 for seq in live):
            return
        budget = self.step_tokens // len(live) - 1
        for seq in live:
            config = self.config_of(seq)
            if config is not None and budget > 0:
                seq.draft_token_ids = propose_drafts(seq, config, max_model_len, budget, self.draft_model)

    def verify(self, chunk: ScheduledChunk, logits: torch.Tensor, choose: Callable, append: Callable,
               scheduler: Scheduler, constrained: bool) -> bool:
        """Walk the chunk's drafts (logits [1 + drafts, vocab]): `choose(rows, seqs)` picks tokens as the
        engine's sampler does, `append(token)` adds one with its stop checks. False when a pick was NO_TOKEN
        (no finite distribution: the caller fails the request)."""
        seq = chunk.seq
        drafts, seq.draft_token_ids = seq.draft_token_ids, []
        self.verify_steps += 1
        self.draft_tokens += len(drafts)
        fast = None
        if not (needs_slow_path(seq) or seq.params.logprobs is not None or constrained):
            fast = choose(logits, [seq] * logits.shape[0])  # greedy, no history: every position's argmax at once
        accepted = 0
        for j in range(len(drafts) + 1):
            # position start + j holds a verified token now: computed, as the plain step records before sampling
            scheduler.record_computed(ScheduledChunk(seq, chunk.start, 1 + j))
            token = fast[j] if fast is not None else choose(logits[j:j + 1], [seq])[0]
            if token == NO_TOKEN:
                return False
            append(token)
            if seq.is_finished or j == len(drafts) or token != drafts[j]:
                break
            accepted += 1
        self.accepted_tokens += accepted
        if not seq.is_finished:
            release_blocks_past(seq, scheduler.blocks)
        return True

    def stats(self) -> dict[str, float]:
        return {
            "spec_draft_tokens": self.draft_tokens,
            "spec_accepted_tokens": self.accepted_tokens,
            "spec_verify_steps": self.verify_steps,
            "spec_acceptance_rate": self.accepted_tokens / self.draft_tokens if self.draft_tokens else 0.0,
            # tokens a speculating sequence gains per forward (1.0 without speculation): the step-count speed-up
            "spec_tokens_per_step": (self.accepted_tokens + self.verify_steps) / self.verify_steps
            if self.verify_steps else 1.0,
        }
