"""Universal assisted decoding: the draft model has its own tokenizer and vocabulary.

Each round the target's text is re-tokenised for the assistant, the assistant drafts greedily, and its new
text is re-tokenised for the target. The target verifies as in any assisted decoding, so greedy output is
still exactly the target's; a tokenisation boundary that differs only costs acceptance, never correctness.
"""

from __future__ import annotations

import torch

from .drafters import AssistantDrafter


def _identity_processors(input_ids, scores):
    return scores  # the target's processors speak the target's vocabulary, not the assistant's


class UniversalAssistantDrafter:
    def __init__(self, assistant, assistant_tokenizer, tokenizer, config):
        self.assistant_tokenizer, self.tokenizer = assistant_tokenizer, tokenizer
        self.drafter = AssistantDrafter(assistant, _identity_processors, config)
        self.drafter.do_sample = False  # no draft probabilities in the target's vocabulary to correct with

    def propose(self, input_ids: torch.Tensor, limit: int):
        empty = input_ids.new_empty(1, 0)
        if limit <= 0:
            return empty, None
        text = self.tokenizer.decode(input_ids[0].tolist())
        assistant_ids = self.assistant_tokenizer.encode(text, add_special_tokens=False)
        if not assistant_ids:
            return empty, None
        assistant_input = torch.tensor([assistant_ids], dtype=torch.long, device=self.drafter.assistant.device)
        drafted, _ = self.drafter.propose(assistant_input, self.drafter.num_tokens)
        full_text = self.assistant_tokenizer.decode(assistant_ids + drafted[0].tolist())
        assistant_text = self.assistant_tokenizer.decode(assistant_ids)
        if not full_text.startswith(assistant_text):
            return empty, None
        new_text = full_text[len(assistant_text):]
        target_ids = self.tokenizer.encode(new_text, add_special_tokens=False)[:limit] if new_text else []
        return torch.tensor([target_ids], dtype=torch.long, device=input_ids.device).view(1, -1), None

    def feedback(self, drafted: int, accepted: int) -> None:
        self.drafter.feedback(drafted, accepted)

    def finish(self) -> None:
        self.drafter.finish()
