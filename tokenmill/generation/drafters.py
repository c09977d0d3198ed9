"""The drafters of assisted decoding that run on the target's own vocabulary: n-gram lookup in the text so far,
and an assistant model (or the model's own first layers) drafting with its own KV cache."""

from __future__ import annotations

import torch

from .config_fields import DEFAULTS


class PromptLookupDrafter:
    """Propose the continuation of the earliest earlier occurrence of the sequence's last n-gram."""

    def __init__(self, num_tokens: int, max_ngram: int, min_ngram: int = 1):
        if num_tokens <= 0 or max_ngram <= 0:
            raise ValueError("prompt_lookup_num_tokens and max_matching_ngram_size must be positive, got "
                             f"{num_tokens} and {max_ngram}")
        if not 1 <= min_ngram <= max_ngram:
            raise ValueError(f"the smallest n-gram to match must be in [1, {max_ngram}], got {min_ngram}")
        self.num_tokens, self.max_ngram, self.min_ngram = num_tokens, max_ngram, min_ngram

    def propose(self, input_ids: torch.Tensor, limit: int):
        ids = input_ids[0]
        length = ids.shape[0]
        for size in range(min(self.max_ngram, length - 1), self.min_ngram - 1, -1):
            windows = ids.unfold(0, size, 1)
            starts = (windows == ids[-size:]).all(dim=1).nonzero().flatten() + size
            for start in starts.tolist():
                end = min(start + self.num_tokens, length, start + limit)
                if start < end:
                    return ids[start:end][None], None
        return ids.new_empty(1, 0), None

    def feedback(self, drafted: int, accepted: int) -> None:
        pass


def assistant_setting(config, assistant, name: str):
    """An assisted-decoding setting: the call's value when it differs from the default, else the assistant's own
    generation_config (where transformers reads these), else the default."""
    value = getattr(config, name, None)
    if value is not None and value != DEFAULTS[name]:
        return value
    own = getattr(getattr(assistant, "generation_config", None), name, None)
    return own if own is not None else DEFAULTS[name]


class AssistantDrafter:
    """A smaller model with the same vocabulary drafts tokens autoregressively, with its own KV cache."""

    def __init__(self, assistant, processors, config):
        from ..cache.dynamic import DynamicCache

        self.assistant, self.processors = assistant, processors
        self.do_sample = config.do_sample
        self.num_tokens = int(assistant_setting(config, assistant, "num_assistant_tokens"))
        self.schedule = assistant_setting(config, assistant, "num_assistant_tokens_schedule")
        if self.schedule not in ("constant", "heuristic", "heuristic_transient"):
            raise ValueError(f"unknown num_assistant_tokens_schedule {self.schedule!r}; "
                             "use 'constant', 'heuristic' or 'heuristic_transient'")
        self.confidence = assistant_setting(config, assistant, "assistant_confidence_threshold")
        self.cache = DynamicCache()
        self.seen = None  # ids whose keys/values the assistant cache holds

    def _sync_cache(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Drop cached positions that disagree with input_ids; return the ids still to feed."""
        kept = 0
        if self.seen is not None:
            common = min(self.seen.shape[1], input_ids.shape[1] - 1)
            same = (self.seen[0, :common] == input_ids[0, :common]).long().cumprod(0)
            kept = int(same.sum())
        self.cache.crop(kept)
        self.seen = input_ids[:, :kept]
        return input_ids[:, kept:]

    def propose(self, input_ids: torch.Tensor, limit: int):
        count = min(self.num_tokens, limit)
        if count <= 0:
            return input_ids.new_empty(1, 0), None
        device = self.assistant.device
        sequence = input_ids.to(device)
        step = self._sync_cache(sequence)
        drafted, draft_scores = [], []
        for _ in range(count):
            out = self.assistant(input_ids=step, past_key_values=self.cache, use_cache=True, logits_to_keep=1)
            self.seen = torch.cat([self.seen, step], dim=1)
            scores = self.processors(sequence, out.logits[:, -1, :].float())
            probs = torch.softmax(scores, dim=-1)
            token = torch.multinomial(probs, 1) if self.do_sample else scores.argmax(-1, keepdim=True)
            drafted.append(token)
            draft_scores.append(scores)
            sequence = torch.cat([sequence, token], dim=1)
            step = token
            if self.confidence and float(probs[0, token[0, 0]]) < self.confidence:
                break  # the assistant doubts its own token: let the target take over sooner
        return torch.cat(drafted, dim=1).to(input_ids.device), torch.stack(draft_scores, dim=1).to(input_ids.device)

    def feedback(self, drafted: int, accepted: int) -> None:
        if self.schedule in ("heuristic", "heuristic_transient"):
            self.num_tokens = self.num_tokens + 2 if accepted == drafted else max(1, self.num_tokens - 1)

    def finish(self) -> None:
        """'heuristic' carries the adapted draft length over to the next call (on the assistant's generation
        config, as transformers does); 'heuristic_transient' starts every call afresh."""
        own = getattr(self.assistant, "generation_config", None)
        if self.schedule == "heuristic" and own is not None:
            own.num_assistant_tokens = self.num_tokens
