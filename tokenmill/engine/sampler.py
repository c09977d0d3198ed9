"""Next-token choice per sequence from its own SamplingParams: bias, penalties, warpers, seeded sampling, logprobs.

Greedy rows without penalties take the batched argmax fast path; other rows are processed one by one
(a batch is at most a few dozen rows, and each row's parameters differ). A row with structured output first
has every token that would leave its grammar masked by its own processor.
"""

from __future__ import annotations

import torch

from .sampling_params import SamplingParams
from .sequence import Sequence, TokenLogprob
from ..generation.vocab_reduce import argmax_rows, topk_rows


def apply_penalties(logits: torch.Tensor, seq: Sequence, params: SamplingParams) -> torch.Tensor:
    if params.repetition_penalty != 1.0:
        # transformers' rule over prompt + output: shrink positive scores, grow negative ones
        seen = torch.tensor(sorted(set(seq.all_token_ids)), dtype=torch.long, device=logits.device)
        picked = logits[seen]
        logits[seen] = torch.where(picked < 0, picked * params.repetition_penalty,
                                   picked / params.repetition_penalty)
    if (params.presence_penalty or params.frequency_penalty) and seq.output_token_ids:
        # OpenAI's rule over generated tokens: logit -= count * frequency + (count > 0) * presence
        counts = torch.bincount(torch.tensor(seq.output_token_ids, device=logits.device),
                                minlength=logits.shape[-1])[: logits.shape[-1]].to(logits.dtype)
        logits -= counts * params.frequency_penalty + (counts > 0).to(logits.dtype) * params.presence_penalty
    return logits


def apply_warpers(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    logits = logits / params.temperature
    if params.top_k and params.top_k < logits.shape[-1]:
        kth = torch.topk(logits, params.top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if params.typical_p < 1.0:
        logits = _typical(logits, params.typical_p)
    if params.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        drop_sorted = cumulative - sorted_logits.softmax(-1) >= params.top_p  # keep the token that crosses
        logits = logits.masked_fill(torch.zeros_like(drop_sorted).scatter(0, order, drop_sorted), float("-inf"))
    if params.min_p > 0.0:
        probs = logits.softmax(-1)
        logits = logits.masked_fill(probs < params.min_p * probs.max(), float("-inf"))
    return logits


def _typical(logits: torch.Tensor, mass: float) -> torch.Tensor:
    log_probs = logits.log_softmax(-1)
    probs = log_probs.exp()
    entropy = -(torch.nan_to_num(log_probs) * probs).sum()
    surprise_gap = (-log_probs - entropy).abs()
    gap_sorted, order = torch.sort(surprise_gap)
    cumulative = probs[order].cumsum(-1)
    last = int((cumulative < mass).sum().clamp(max=logits.shape[-1] - 1))
    drop_sorted = torch.arange(logits.shape[-1], device=logits.device) > last
    return logits.masked_fill(torch.zeros_like(drop_sorted).scatter(0, order, drop_sorted), float("-inf"))


def _blocked_tokens(seq: Sequence, eos_ids: list[int]) -> list[int]:
    """Tokens that may not end the sequence yet (min_tokens)."""
    if len(seq.output_token_ids) >= seq.params.min_tokens:
        return []
    return list(eos_ids) + list(seq.params.stop_token_ids)


def choose_token(logits: torch.Tensor, seq: Sequence, eos_ids: list[int]) -> int:
    params = seq.params
    logits = logits.clone()
    if params.logit_bias:
        for token, bias in params.logit_bias.items():
            if 0 <= token < logits.shape[-1]:
                logits[token] += bias
    blocked = _blocked_tokens(seq, eos_ids)
    if blocked:
        kept = logits.index_fill(0, torch.tensor(blocked, dtype=torch.long), float("-inf"))
        if bool(torch.isfinite(kept).any()):  # a finished grammar allows only eos: it outranks min_tokens
            logits = kept
    logits = apply_penalties(logits, seq, params)
    if not params.sampled:
        return int(logits.argmax())
    probs = apply_warpers(logits, params).softmax(-1)
    return int(torch.multinomial(probs, 1, generator=seq.generator))


def needs_slow_path(seq: Sequence) -> bool:
    params = seq.params
    return params.sampled or params.needs_history or bool(params.logit_bias)


def record_logprobs(rows: torch.Tensor, seqs: list[Sequence], tokens: list[int]) -> None:
    """Append each chosen token's log-probability (and top alternatives) under the model's own distribution,
    before sampling transforms, for the sequences that asked; one batched pass and one host copy for all."""
    wanted = [i for i, seq in enumerate(seqs) if seq.params.logprobs is not None]
    if not wanted:
        return
    logits = rows if len(wanted) == len(seqs) else rows[torch.tensor(wanted)]
    # log p = logit - logsumexp: no [rows, vocab] log-softmax is materialized
    normalizer = logits.logsumexp(-1, keepdim=True)
    chosen = torch.tensor([tokens[i] for i in wanted])[:, None]
    chosen_logprobs = (logits.gather(1, chosen) - normalizer)[:, 0].tolist()
    top_n = max(seqs[i].params.logprobs for i in wanted)
    top_values, top_ids = topk_rows(logits, top_n) if top_n else (logits[:, :0], logits[:, :0].long())
    top_values, top_ids = (top_values - normalizer).tolist(), top_ids.tolist()
    for k, i in enumerate(wanted):
        n = seqs[i].params.logprobs
        seqs[i].output_logprobs.append(TokenLogprob(tokens[i], chosen_logprobs[k],
                                                    list(zip(top_ids[k][:n], top_values[k][:n]))))


def constrain(logits: torch.Tensor, seq: Sequence, processor) -> torch.Tensor:
    """Mask the tokens the sequence's grammar forbids; the processor re-syncs from prompt + output ids."""
    token_ids = torch.tensor([seq.all_token_ids], dtype=torch.long)
    return processor(token_ids, logits[None])[0]


def sample(rows: torch.Tensor, seqs: list[Sequence], eos_ids: list[int], constraints: list | None = None
           ) -> list[int]:
    """One next token per sequence (rows [seqs, vocab]: each one's last-position logits), recording logprobs.
    `constraints[i]`: sequence i's structured-output processor, or None (unconstrained)."""
    tokens: list[int] = argmax_rows(rows).tolist()  # greedy rows need nothing more
    for i, seq in enumerate(seqs):
        processor = constraints[i] if constraints else None
        if processor is not None:
            allowed = constrain(rows[i], seq, processor)
            tokens[i] = choose_token(allowed, seq, eos_ids) if needs_slow_path(seq) else int(allowed.argmax())
        elif needs_slow_path(seq):
            tokens[i] = choose_token(rows[i], seq, eos_ids)
    record_logprobs(rows, seqs, tokens)
    return tokens


def prompt_logprobs(logits: torch.Tensor, seq: Sequence, start: int, top_n: int) -> list[TokenLogprob]:
    """Logprob of each prompt token given the ones before it; logits[j] predicts token start + j + 1."""
    prompt = seq.prompt_token_ids
    targets = prompt[start + 1:start + 1 + logits.shape[0]]
    if not targets:
        return []
    log_probs = logits[:len(targets)].log_softmax(-1)
    chosen = log_probs.gather(1, torch.tensor(targets)[:, None])[:, 0].tolist()
    top_values, top_ids = topk_rows(log_probs, top_n) if top_n else (log_probs[:, :0], log_probs[:, :0].long())
    top_values, top_ids = top_values.tolist(), top_ids.tolist()
    return [TokenLogprob(token, chosen[j], list(zip(top_ids[j], top_values[j]))) for j, token in enumerate(targets)]
