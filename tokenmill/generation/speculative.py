"""Assisted / speculative decoding: a cheap drafter proposes tokens, the target model checks them in one pass.

Drafters: an assistant model with the same vocabulary (`assistant_model`), the model's own first layers
(`assistant_early_exit`, self-speculation), n-gram lookup in the text so far (`prompt_lookup_num_tokens`), or an
assistant with another tokenizer (`assistant_tokenizer`, see universal_assisted.py). Greedy verification keeps the longest prefix the target would have chosen itself plus
one target token, so results equal plain greedy decoding. With sampling and draft probabilities, the
speculative-sampling rule (Leviathan et al. 2023, algorithm 1) keeps the target's distribution exactly.
"""

from __future__ import annotations

import torch

from .drafters import AssistantDrafter, PromptLookupDrafter
from .generate import GenerationRequest, positions_from_mask
from .universal_assisted import UniversalAssistantDrafter


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


def make_drafter(model, request: GenerationRequest, assistant_model=None, assistant_tokenizer=None,
                 tokenizer=None):
    config = request.config
    early_exit = getattr(config, "assistant_early_exit", None)
    if early_exit:
        if assistant_model is not None:
            raise ValueError("pass either assistant_model= or assistant_early_exit=, not both")
        return AssistantDrafter(model.early_exit(int(early_exit)), request.processors, config)
    if assistant_model is not None:
        from ..models.base import CausalLM

        if not isinstance(assistant_model, CausalLM):
            raise TypeError("assistant_model must be a tokenmill model (tokenmill.AutoModelForCausalLM), got "
                            f"{type(assistant_model).__module__}.{type(assistant_model).__name__}")
    if assistant_model is not None and assistant_tokenizer is not None:
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
