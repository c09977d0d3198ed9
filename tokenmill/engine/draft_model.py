"""Draft-model speculation in the engine: a smaller model with the target's vocabulary drafts each sequence's
next tokens greedily, with one KV cache per sequence kept between steps.

The drafts are a deterministic function of the sequence's tokens, so the engine's verification (speculation.py:
pick each token exactly as without drafts, keep going while it equals the draft) leaves greedy output unchanged
and a seeded sampled one identical, whatever the draft model is; a better draft model only accepts more. A
sequence's cache is cut back to the tokens it shares with the sequence after verification (rejected drafts are
dropped), so the draft model reads each verified token once.
"""

from __future__ import annotations

import torch

from ..generation.config import GenerationConfig
from ..generation.drafters import AssistantDrafter
from ..generation.logits_base import LogitsProcessorList
from .sequence import Sequence
from .spec_params import MAX_SPECULATIVE_TOKENS


class DraftModelError(ValueError):
    """A draft model that cannot draft for this target (vocabulary), or a request for one the engine lacks."""


def check_draft_model(draft, target) -> None:
    """The draft's ids must be the target's: its vocabulary no larger (padded tails differ between sizes of one
    family), and both read by the same tokenizer (the caller's promise: ids carry no tokenizer here)."""
    draft_vocab, target_vocab = draft.config.vocab_size, target.config.vocab_size
    if draft_vocab > target_vocab:
        raise DraftModelError(f"the draft model's vocabulary ({draft_vocab} ids) is larger than the target's "
                              f"({target_vocab}): a draft model must share the target's tokenizer")


def _greedy_drafter(model) -> AssistantDrafter:
    """generate()'s assistant drafter, greedy, unprocessed logits, never stopping early on its own doubt (the
    engine's limit sets the length)."""
    config = GenerationConfig(do_sample=False, num_assistant_tokens=MAX_SPECULATIVE_TOKENS,
                              num_assistant_tokens_schedule="constant", assistant_confidence_threshold=0.0)
    return AssistantDrafter(model, LogitsProcessorList(), config)


class DraftModelProposer:
    """Greedy drafts from `model` for each running sequence (keyed by request id and choice): one assistant
    drafter (generation/drafters.py) per sequence, whose cache follows the sequence's verified tokens."""

    def __init__(self, model):
        self.model = model.eval()
        self.max_positions = model.config.max_position_embeddings
        self._states: dict[tuple[str, int], AssistantDrafter] = {}

    def keep_only(self, live: list[Sequence]) -> None:
        """Forget the caches of sequences that finished or left the running set (a preempted one re-reads)."""
        keys = {(seq.request_id, seq.index) for seq in live}
        for key in [key for key in self._states if key not in keys]:
            del self._states[key]

    @torch.inference_mode()
    def propose(self, seq: Sequence, limit: int) -> list[int]:
        """At most `limit` drafts after the sequence's tokens (fewer near the draft model's context length)."""
        ids = seq.all_token_ids
        limit = min(limit, self.max_positions - len(ids))
        if limit <= 0:
            return []
        key = (seq.request_id, seq.index)
        if key not in self._states:
            self._states[key] = _greedy_drafter(self.model)
        drafts, _ = self._states[key].propose(torch.tensor([ids], dtype=torch.long), limit)
        return drafts[0].tolist()
