"""Next-token choice for a batch of sequences, each with its own SamplingParams: bias, min_tokens, penalties,
warpers, seeded draw, logprobs.

Greedy rows without penalties take the batched argmax fast path. The other rows go through one batched pass
with a parameter tensor per transform (`generation/sampling.py`, the arithmetic generate() uses too), then
each sampled row draws from its own seeded generator. A row with structured output first has every token that
would leave its grammar masked by its own processor.
"""

from __future__ import annotations

import hashlib

import torch

from ..generation.sampling import Warpers, apply_repetition_penalty, draw
from ..generation.vocab_reduce import argmax_rows, topk_rows
from .sampling_params import SamplingParams
from .sequence import Sequence, TokenLogprob

NEUTRAL = SamplingParams()  # every warper off (temperature 1)
NO_TOKEN = -1  # a row whose distribution is not finite: the engine fails that sequence alone


def unusable_rows(values: torch.Tensor, tokens: list[int]) -> list[int]:
    """Rows whose chosen value is NaN or infinite: the logits (or the row's parameters) broke its arithmetic."""
    chosen = values.gather(1, torch.tensor(tokens, dtype=torch.long, device=values.device)[:, None])[:, 0]
    return (~torch.isfinite(chosen)).nonzero()[:, 0].tolist()


def _valid_distributions(probs: torch.Tensor) -> torch.Tensor:
    """bool [rows]: every probability finite and some mass left (what torch.multinomial needs)."""
    return torch.isfinite(probs).all(-1) & (probs.sum(-1) > 0)


def _row_token_mask(token_lists: list[list[int]], vocab: int, device) -> torch.Tensor:
    """bool [rows, vocab]: True where row i lists the token (ids outside the vocabulary ignored)."""
    rows = [i for i, tokens in enumerate(token_lists) for t in tokens if 0 <= t < vocab]
    cols = [t for tokens in token_lists for t in tokens if 0 <= t < vocab]
    mask = torch.zeros((len(token_lists), vocab), dtype=torch.bool, device=device)
    mask[torch.tensor(rows, dtype=torch.long), torch.tensor(cols, dtype=torch.long)] = True
    return mask


def apply_logit_bias(logits: torch.Tensor, seqs: list[Sequence]) -> torch.Tensor:
    entries = [(i, token, bias) for i, seq in enumerate(seqs) for token, bias in (seq.params.logit_bias or {}).items()
               if 0 <= token < logits.shape[-1]]
    if not entries:
        return logits
    rows, tokens, biases = zip(*entries)
    index = (torch.tensor(rows), torch.tensor(tokens))
    return logits.index_put(index, torch.tensor(biases, dtype=logits.dtype), accumulate=True)


def block_early_stop(logits: torch.Tensor, seqs: list[Sequence], eos_ids: list[int]) -> torch.Tensor:
    """min_tokens: eos and stop tokens are masked until a row has produced that many tokens, unless nothing
    else is left (a finished grammar allows only eos: it outranks min_tokens)."""
    blocked = [list(eos_ids) + list(seq.params.stop_token_ids)
               if len(seq.output_token_ids) < seq.params.min_tokens else [] for seq in seqs]
    if not any(blocked):
        return logits
    kept = logits.masked_fill(_row_token_mask(blocked, logits.shape[-1], logits.device), float("-inf"))
    return torch.where(torch.isfinite(kept).any(-1, keepdim=True), kept, logits)


def apply_penalties(logits: torch.Tensor, seqs: list[Sequence]) -> torch.Tensor:
    """transformers' repetition penalty over prompt + output, then OpenAI's presence / frequency penalties over
    the output: logit -= count * frequency + (count > 0) * presence."""
    vocab = logits.shape[-1]
    penalties = [seq.params.repetition_penalty for seq in seqs]
    if any(p != 1.0 for p in penalties):
        histories = [seq.all_token_ids if p != 1.0 else [] for seq, p in zip(seqs, penalties)]
        longest = max(len(history) for history in histories)
        token_ids = torch.tensor([history + [-1] * (longest - len(history)) for history in histories])  # -1: pad
        logits = apply_repetition_penalty(logits, token_ids, torch.tensor(penalties, dtype=torch.float32))
    counted = [seq.output_token_ids if seq.params.presence_penalty or seq.params.frequency_penalty else []
               for seq in seqs]
    if any(counted):
        flat = [i * vocab + t for i, tokens in enumerate(counted) for t in tokens if 0 <= t < vocab]
        counts = torch.bincount(torch.tensor(flat, dtype=torch.long, device=logits.device),
                                minlength=len(seqs) * vocab).reshape(len(seqs), vocab).to(logits.dtype)
        frequency = torch.tensor([[seq.params.frequency_penalty] for seq in seqs], dtype=logits.dtype)
        presence = torch.tensor([[seq.params.presence_penalty] for seq in seqs], dtype=logits.dtype)
        logits = logits - (counts * frequency + (counts > 0).to(logits.dtype) * presence)
    return logits


def adjusted_logits(logits: torch.Tensor, seqs: list[Sequence], eos_ids: list[int]) -> torch.Tensor:
    """Every row's logits after its bias, min_tokens and penalties: what greedy rows take the argmax of."""
    return apply_penalties(block_early_stop(apply_logit_bias(logits, seqs), seqs, eos_ids), seqs)


def warpers(seqs: list[Sequence]) -> Warpers:
    """Each sampled row's warpers (a greedy row, never warped, gets the neutral values)."""
    params = [seq.params if seq.params.sampled else NEUTRAL for seq in seqs]
    return Warpers.per_row(temperature=[p.temperature for p in params], top_k=[p.top_k for p in params],
                           top_p=[p.top_p for p in params], min_p=[p.min_p for p in params],
                           typical_p=[p.typical_p for p in params])


def sampling_probs(logits: torch.Tensor, seqs: list[Sequence], eos_ids: list[int], ops) -> torch.Tensor:
    """The distribution each row's token comes from: a greedy row's is all on its argmax (taken by `ops`, the
    model's kernel set)."""
    adjusted = adjusted_logits(logits, seqs, eos_ids)
    probs = warpers(seqs)(adjusted).softmax(-1)
    greedy = torch.tensor([not seq.params.sampled for seq in seqs])
    if bool(greedy.any()):
        one_hot = torch.zeros_like(probs).scatter_(1, argmax_rows(adjusted, ops)[:, None], 1.0)
        probs = torch.where(greedy[:, None], one_hot, probs)
    return probs


def choose_tokens(logits: torch.Tensor, seqs: list[Sequence], eos_ids: list[int], ops) -> list[int]:
    """One token per row: argmax of the adjusted logits for greedy rows (by `ops`, the model's kernel set), a
    seeded draw for sampled ones; NO_TOKEN for a row whose distribution is not finite (the others unaffected)."""
    adjusted = adjusted_logits(logits, seqs, eos_ids)
    tokens = argmax_rows(adjusted, ops).tolist()
    sampled = [i for i, seq in enumerate(seqs) if seq.params.sampled]
    for i in unusable_rows(adjusted, tokens):
        tokens[i] = NO_TOKEN
    if sampled:
        chosen = [seqs[i] for i in sampled]
        rows = adjusted if len(sampled) == len(seqs) else adjusted[torch.tensor(sampled)]
        probs = warpers(chosen)(rows).softmax(-1)
        valid = _valid_distributions(probs).tolist()
        drawable = [k for k, ok in enumerate(valid) if ok]
        drawn = draw(probs[drawable], [chosen[k].generator for k in drawable]).tolist() if drawable else []
        for i in sampled:
            tokens[i] = NO_TOKEN
        for k, token in zip(drawable, drawn):
            tokens[sampled[k]] = token
    return tokens


def choice_seed(seed: int, index: int) -> int:
    """The seed of choice `index` of a request seeded `seed`. Choice 0 uses the seed itself (the stream
    generate() draws from after torch.manual_seed(seed)); choice j > 0 a 63-bit hash of (seed, j) with the top
    bit set, so neighbouring seeds' choices never share a stream (seed + j did: choice j of seed s was
    choice 0 of seed s + j)."""
    if index == 0:
        return seed
    digest = hashlib.blake2b(f"tokenmill-choice:{seed}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") | (1 << 63)


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


def sample(rows: torch.Tensor, seqs: list[Sequence], eos_ids: list[int], ops, constraints: list | None = None
           ) -> list[int]:
    """One next token per sequence (rows [seqs, vocab]: each one's last-position logits), recording logprobs.
    `ops`: the model's kernel set (`model.execution_policy.ops`), which takes the greedy argmax.
    `constraints[i]`: sequence i's structured-output processor, or None (unconstrained).
    A row whose logits (raw, or after its own penalties and temperature) leave no finite choice gets NO_TOKEN."""
    tokens: list[int] = argmax_rows(rows, ops).tolist()  # greedy rows need nothing more
    constraints = constraints or [None] * len(seqs)
    slow = [i for i, seq in enumerate(seqs) if needs_slow_path(seq)]
    constrained = [i for i, processor in enumerate(constraints) if processor is not None]
    allowed = rows.clone() if constrained else rows
    for i in constrained:  # each grammar is its own stateful matcher
        try:
            allowed[i] = constrain(rows[i], seqs[i], constraints[i])
        except Exception as error:  # noqa: BLE001 - one grammar's failure is its row's alone
            seqs[i].error = f"structured output failed: {error!r}"
            allowed[i] = float("nan")
    for i in constrained:
        tokens[i] = int(allowed[i].argmax())
    for i in unusable_rows(allowed, tokens):
        tokens[i] = NO_TOKEN
    if slow:
        slow_rows = allowed if len(slow) == len(seqs) else allowed[torch.tensor(slow)]
        for i, token in zip(slow, choose_tokens(slow_rows, [seqs[i] for i in slow], eos_ids, ops)):
            tokens[i] = token
    kept = [i for i, token in enumerate(tokens) if token != NO_TOKEN]
    if len(kept) == len(seqs):
        record_logprobs(rows, seqs, tokens)
    elif kept:
        record_logprobs(rows[torch.tensor(kept)], [seqs[i] for i in kept], [tokens[i] for i in kept])
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
