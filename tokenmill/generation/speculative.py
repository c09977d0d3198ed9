"""Assisted / speculative decoding: a cheap drafter proposes tokens, the target model checks them in one pass.

Drafters: an assistant model with the same vocabulary (`assistant_model`), the model's own first layers
(`assistant_early_exit`, self-speculation), n-gram lookup in the text so far (`prompt_lookup_num_tokens`), or an
assistant with another tokenizer (`assistant_tokenizer`, see universal_assisted.py). Greedy verification keeps the longest prefix the target would have chosen itself plus
one target token, so results equal plain greedy decoding. With sampling and draft probabilities, the
speculative-sampling rule (Leviathan et al. 2023, algorithm 1) keeps the target's distribution exactly.
"""

from __future__ import annotations

import copy

import torch

from .generate import GenerationRequest, positions_from_mask


class PromptLookupDrafter:
    """Propose the continuation of the earliest earlier occurrence of the sequence's last n-gram."""

    def __init__(self, num_tokens: int, max_ngram: int):
        if num_tokens <= 0 or max_ngram <= 0:
            raise ValueError("prompt_lookup_num_tokens and max_matching_ngram_size must be positive, got "
                             f"{num_tokens} and {max_ngram}")
        self.num_tokens, self.max_ngram = num_tokens, max_ngram

    def propose(self, input_ids: torch.Tensor, limit: int):
        ids = input_ids[0]
        length = ids.shape[0]
        for size in range(min(self.max_ngram, length - 1), 0, -1):
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
    from .config import DEFAULTS

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


def speculative_accept(draft_ids: torch.Tensor, draft_scores: torch.Tensor, target_scores: torch.Tensor):
    """Leviathan et al. algorithm 1 for one row. draft_ids [n]; draft_scores [n, vocab] (the drafter's
    processed scores); target_scores [n + 1, vocab]. Returns the kept tokens [m] (1 ≤ m ≤ n + 1)."""
    drafted = draft_ids.shape[0]
    q = torch.softmax(draft_scores, dim=-1)
    p = torch.softmax(target_scores, dim=-1)
    positions = torch.arange(drafted, device=draft_ids.device)
    ratio = p[positions, draft_ids] / q[positions, draft_ids]
    accepted = torch.rand_like(ratio) <= ratio
    matches = int((~accepted).long().cumsum(0).eq(0).sum())
    if matches < drafted:
        residual = (p[matches] - q[matches]).clamp(min=0)
        residual = residual / residual.sum()
    else:
        residual = p[matches]
    bonus = torch.multinomial(residual, 1)
    return torch.cat([draft_ids[:matches], bonus])


def verify_greedy_or_sampled(draft_ids: torch.Tensor, target_scores: torch.Tensor, do_sample: bool) -> torch.Tensor:
    """Without draft probabilities: pick the target's own token at every position, keep the agreeing prefix."""
    if do_sample:
        chosen = torch.multinomial(torch.softmax(target_scores, dim=-1), 1).flatten()
    else:
        chosen = target_scores.argmax(-1)
    agree = (chosen[:-1] == draft_ids).long().cumprod(0)
    return chosen[:int(agree.sum()) + 1]


def early_exit_model(model, layers: int):
    """The model's first `layers` decoder layers, then its final norm and lm_head: the drafter of self-speculative
    decoding (transformers' assistant_early_exit). A shallow view: every weight is shared, none copied."""
    total = len(model.model.layers)
    if not 0 < layers < total:
        raise ValueError(f"assistant_early_exit must be between 1 and {total - 1} (the model has {total} layers), "
                         f"got {layers}")
    decoder = copy.copy(model.model)
    decoder._modules = dict(model.model._modules)  # its own module table, so the original keeps all its layers
    decoder._modules["layers"] = torch.nn.ModuleList(list(model.model.layers)[:layers])
    view = copy.copy(model)
    view._modules = dict(model._modules)
    view._modules["model"] = decoder
    return view


def make_drafter(model, request: GenerationRequest, assistant_model=None, assistant_tokenizer=None,
                 tokenizer=None):
    config = request.config
    early_exit = getattr(config, "assistant_early_exit", None)
    if early_exit:
        if assistant_model is not None:
            raise ValueError("pass either assistant_model= or assistant_early_exit=, not both")
        return AssistantDrafter(early_exit_model(model, int(early_exit)), request.processors, config)
    if assistant_model is not None:
        from ..models.base import CausalLM

        if not isinstance(assistant_model, CausalLM):
            raise TypeError("assistant_model must be a tokenmill model (tokenmill.AutoModelForCausalLM), got "
                            f"{type(assistant_model).__module__}.{type(assistant_model).__name__}")
    if assistant_model is not None and assistant_tokenizer is not None:
        from .universal_assisted import UniversalAssistantDrafter

        if tokenizer is None:
            raise ValueError("universal assisted decoding needs both tokenizer= and assistant_tokenizer=")
        return UniversalAssistantDrafter(assistant_model, assistant_tokenizer, tokenizer, config)
    if assistant_model is not None:
        vocab, assistant_vocab = model.config.vocab_size, assistant_model.config.vocab_size
        if vocab != assistant_vocab:
            raise ValueError(f"assistant_model has a vocabulary of {assistant_vocab} tokens, the model {vocab}; "
                             "pass tokenizer= and assistant_tokenizer= for universal assisted decoding")
        return AssistantDrafter(assistant_model, request.processors, config)
    return PromptLookupDrafter(int(config.prompt_lookup_num_tokens),
                               int(getattr(config, "max_matching_ngram_size", None) or 2))


class DraftStats:
    """Acceptance bookkeeping, kept on the drafter for benchmarks (drafted vs accepted tokens, target passes)."""

    def __init__(self):
        self.drafted = self.accepted = self.target_passes = 0

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0


def target_scores(model, request: GenerationRequest, candidate: torch.Tensor, mask: torch.Tensor, drafted: int):
    """One target pass over the unseen part of `candidate`; raw logits and processed scores [drafted + 1, vocab]."""
    cache = request.cache
    step = candidate[:, cache.get_seq_length():]
    positions = positions_from_mask(mask)[:, -step.shape[1]:]
    out = model(input_ids=step, attention_mask=mask, position_ids=positions, past_key_values=cache,
                use_cache=True, logits_to_keep=drafted + 1)
    raw = out.logits[0, -(drafted + 1):].to(dtype=torch.float32, copy=True)
    start = candidate.shape[1] - drafted
    scores = torch.cat([request.processors(candidate[:, :start + i], raw[i:i + 1].clone())
                        for i in range(drafted + 1)])
    return raw, scores


def assisted_loop(model, request: GenerationRequest, drafter=None):
    """Draft, verify in one target pass, keep the agreeing prefix + one target token, crop the cache."""
    config = request.config
    if request.input_ids.shape[0] != 1:
        raise ValueError("assisted and prompt-lookup decoding support one prompt at a time (batch size 1), got "
                         f"{request.input_ids.shape[0]}")
    drafter = drafter or make_drafter(model, request, request.assistant_model, request.assistant_tokenizer,
                                      request.tokenizer)
    drafter.stats = getattr(drafter, "stats", None) or DraftStats()
    input_ids, mask = request.input_ids, request.attention_mask
    scores_seen, logits_seen = [], []
    finished = False
    while not finished:
        draft, draft_scores = drafter.propose(input_ids, config.max_length - input_ids.shape[1] - 1)
        drafted = draft.shape[1]
        candidate = torch.cat([input_ids, draft], dim=1)
        raw, scores = target_scores(model, request, candidate, torch.cat([mask, mask.new_ones(1, drafted)], 1),
                                    drafted)
        if config.do_sample and draft_scores is not None and drafted:
            kept = speculative_accept(draft[0], draft_scores[0], scores)
        else:
            kept = verify_greedy_or_sampled(draft[0], scores, config.do_sample)
        appended = 0
        for token in kept:  # stop criteria are checked after every token, exactly as plain decoding would
            input_ids = torch.cat([input_ids, token.view(1, 1)], dim=1)
            mask = torch.cat([mask, mask.new_ones(1, 1)], dim=1)
            appended += 1
            if bool(request.criteria(input_ids, scores[appended - 1:appended])[0]):
                finished = True
                break
        scores_seen.extend(scores[:appended, None].unbind(0))
        logits_seen.extend(raw[:appended, None].unbind(0))
        if request.streamer is not None:
            request.streamer.put(input_ids[0, -appended:].cpu())
        request.cache.crop(input_ids.shape[1] - 1)
        accepted = min(appended, len(kept) - 1)
        drafter.feedback(drafted, accepted)
        drafter.stats.drafted += drafted
        drafter.stats.accepted += accepted
        drafter.stats.target_passes += 1
    if hasattr(drafter, "finish"):
        drafter.finish()
    return (input_ids, tuple(scores_seen) if config.output_scores else None,
            tuple(logits_seen) if config.output_logits else None)
