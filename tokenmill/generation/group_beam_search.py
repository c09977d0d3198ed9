"""Diverse (group) beam search, Vijayakumar et al. 2016: `num_beams` split into `num_beam_groups` groups that
run beam search side by side; within a step, group g's scores are lowered by `diversity_penalty` times the
number of times each token was already picked by groups 0..g-1 (Hamming diversity). transformers moved it out
of its core; this keeps its semantics (finished hypotheses pooled per prompt and group, best overall returned).
"""

from __future__ import annotations

import torch

from .beam_search import FINISHED_PENALTY
from .generate import GenerationRequest, _as_list, positions_from_mask
from .outputs import GenerateBeamDecoderOnlyOutput
from .stopping_criteria import StopStringCriteria


class Hypotheses:
    """The `size` best finished hypotheses of one (prompt, group)."""

    def __init__(self, size: int, length_penalty: float, early_stopping, max_length: int):
        self.size, self.length_penalty = size, length_penalty
        self.early_stopping, self.max_length = early_stopping, max_length
        # (score, tokens, beam row per step, eos_follows): eos-ended hypotheses are stored without their eos and,
        # like running beams, get eos_token_id[0] after them on return (transformers 4.55); stop-string-ended do not
        self.beams: list[tuple[float, torch.Tensor, list[int], bool]] = []
        self.done = False

    def add(self, tokens: torch.Tensor, sum_logprobs: float, generated: int, ancestry: list[int],
            eos_follows: bool = True) -> None:
        score = sum_logprobs / (generated ** self.length_penalty)
        if len(self.beams) < self.size or score > self.worst():
            self.beams.append((score, tokens, ancestry, eos_follows))
            self.beams.sort(key=lambda beam: beam[0], reverse=True)
            del self.beams[self.size:]

    def worst(self) -> float:
        return self.beams[-1][0] if self.beams else 1e9

    def can_stop(self, best_sum_logprobs: float, cur_len: int, prompt_length: int) -> bool:
        """No running beam can still enter the pool (transformers' early_stopping variants)."""
        if len(self.beams) < self.size:
            return False
        if self.early_stopping is True:
            return True
        longest = self.max_length if (self.early_stopping == "never" and self.length_penalty > 0.0) else cur_len
        return self.worst() >= best_sum_logprobs / ((longest - prompt_length) ** self.length_penalty)


def hamming_penalty(scores: torch.Tensor, earlier_tokens: torch.Tensor, penalty: float, group_size: int):
    """scores [batch * group_size, vocab]; earlier_tokens [batch, n] picked this step by earlier groups."""
    if earlier_tokens.shape[1] == 0 or penalty == 0.0:
        return scores
    counts = torch.stack([torch.bincount(row, minlength=scores.shape[-1]) for row in earlier_tokens])
    return scores - penalty * counts.to(scores.dtype).repeat_interleave(group_size, dim=0)


def stop_string_hits(stop_criteria, sequences, top_index, group, state, cur_len, vocab) -> list[list[bool]]:
    """[batch][keep]: does the candidate (its beam's tokens + the new token) end on a stop string?"""
    batch, keep = top_index.shape
    if not stop_criteria:
        return [[False] * keep for _ in range(batch)]
    beam, token = top_index // vocab, top_index % vocab
    rows = torch.arange(batch)[:, None] * state["beams"] + group * state["group_size"] + beam
    candidates = torch.cat([sequences[rows.flatten(), :cur_len], token.reshape(-1, 1)], dim=1)
    hits = torch.zeros(batch * keep, dtype=torch.bool)
    for criterion in stop_criteria:
        hits |= criterion(candidates, None).cpu()
    return hits.view(batch, keep).tolist()


def group_step(state, group: int, log_probs, sequences, cur_len, prompt_length, stop_criteria=()):
    """Advance one group of every prompt; returns (rows kept [batch, g], tokens [batch, g], scores [batch, g]).
    A top-`size` candidate ending on eos (or on a stop string) becomes a finished hypothesis of its group."""
    batch, beams, size = state["batch"], state["beams"], state["group_size"]
    vocab = log_probs.shape[-1]
    keep = max(2, 1 + len(state["eos"])) * size
    totals = (log_probs + state["scores"][:, group * size:(group + 1) * size].reshape(-1, 1)).view(batch, -1)
    top_scores, top_index = totals.topk(keep, dim=1)
    stopped = stop_string_hits(stop_criteria, sequences, top_index, group, state, cur_len, vocab)
    rows, tokens, scores = [], [], []
    for prompt in range(batch):
        pool = state["pools"][prompt][group]
        if pool.done:
            rows.append([0] * size), tokens.append([state["pad"]] * size), scores.append([0.0] * size)
            continue
        kept_rows, kept_tokens, kept_scores = [], [], []
        for rank, (score, index) in enumerate(zip(top_scores[prompt].tolist(), top_index[prompt].tolist())):
            beam, token = index // vocab, index % vocab
            row = prompt * beams + group * size + beam
            if token in state["eos"] or stopped[prompt][rank]:
                if rank < size:  # only a top-`size` candidate may end a hypothesis
                    ended_by_eos = token in state["eos"]
                    hypothesis = sequences[row, :cur_len] if ended_by_eos else \
                        torch.cat([sequences[row, :cur_len], sequences.new_tensor([token])])
                    pool.add(hypothesis.clone(), score, cur_len + 1 - prompt_length, state["ancestry"][row] + [row],
                             ended_by_eos)
            else:
                kept_rows.append(row), kept_tokens.append(token), kept_scores.append(score)
            if len(kept_rows) == size:
                break
        pool.done = pool.can_stop(max(top_scores[prompt].tolist()), cur_len + 1, prompt_length)
        rows.append(kept_rows), tokens.append(kept_tokens), scores.append(kept_scores)
    device = log_probs.device
    return (torch.tensor(rows, device=device), torch.tensor(tokens, device=device),
            torch.tensor(scores, device=device, dtype=torch.float32))


def group_beam_search_loop(model, request: GenerationRequest):
    config, cache = request.config, request.cache
    if request.streamer is not None:
        raise ValueError("a streamer cannot be used with beam search; set num_beams=1")
    beams, groups = config.num_beams, config.num_beam_groups
    if beams % groups:
        raise ValueError(f"num_beams ({beams}) must be divisible by num_beam_groups ({groups})")
    returned = config.num_return_sequences or 1
    if returned > beams:
        raise ValueError(f"num_return_sequences ({returned}) must be at most num_beams ({beams})")
    if config.do_sample:
        raise ValueError("diverse (group) beam search does not sample: set do_sample=False")
    size, penalty = beams // groups, float(config.diversity_penalty or 0.0)
    sequences, attention_mask = request.input_ids, request.attention_mask
    batch, prompt_length = sequences.shape[0] // beams, sequences.shape[1]
    length_penalty = 1.0 if config.length_penalty is None else config.length_penalty
    early_stopping = False if config.early_stopping is None else config.early_stopping
    eos = _as_list(config.eos_token_id)
    scores = torch.full((batch, beams), FINISHED_PENALTY, device=sequences.device)
    scores[:, ::size] = 0.0  # one live beam per group at the start: all copies of a prompt are identical
    state = {"batch": batch, "beams": beams, "group_size": size, "eos": set(eos), "eos_order": eos, "scores": scores,
             "pad": config.pad_token_id if config.pad_token_id is not None else (eos[0] if eos else 0),
             "ancestry": [[] for _ in range(batch * beams)],  # per running row: the row behind each step
             "pools": [[Hypotheses(size, length_penalty, early_stopping, config.max_length) for _ in range(groups)]
                       for _ in range(batch)]}
    # stop strings end single hypotheses, like eos (transformers 5's beam search); other criteria end the search
    stop_criteria = [criterion for criterion in request.criteria if isinstance(criterion, StopStringCriteria)]
    step_ids, scores_seen, logits_seen = sequences[:, cache.get_seq_length():], [], []
    while True:
        cur_len = sequences.shape[1]
        positions = positions_from_mask(attention_mask)[:, -step_ids.shape[1]:]
        logits = model(input_ids=step_ids, attention_mask=attention_mask, position_ids=positions,
                       past_key_values=cache, use_cache=True, logits_to_keep=1).logits[:, -1, :].float()
        log_probs_all = torch.log_softmax(logits, dim=-1)
        processed_all = torch.empty_like(log_probs_all)
        new_sequences, next_tokens = sequences.clone(), torch.zeros(batch, beams, dtype=torch.long)
        source_rows = torch.zeros(batch, beams, dtype=torch.long)
        for group in range(groups):
            members = torch.tensor([p * beams + group * size + i for p in range(batch) for i in range(size)])
            diverse = hamming_penalty(log_probs_all[members], next_tokens[:, :group * size], penalty, size)
            processed = request.processors(sequences[members], diverse)
            processed_all[members] = processed
            rows, tokens, kept = group_step(state, group, processed, sequences, cur_len, prompt_length,
                                            stop_criteria)
            state["scores"][:, group * size:(group + 1) * size] = kept
            next_tokens[:, group * size:(group + 1) * size] = tokens
            source_rows[:, group * size:(group + 1) * size] = rows
            new_sequences[members] = sequences[rows.flatten()]
        if config.output_scores:
            scores_seen.append(processed_all)
        if config.output_logits:
            logits_seen.append(logits)
        sequences = torch.cat([new_sequences, next_tokens.view(-1, 1)], dim=1)
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones(attention_mask.shape[0], 1)], dim=-1)
        cache.reorder_cache(source_rows.flatten())
        state["ancestry"] = [state["ancestry"][row] + [row] for row in source_rows.flatten().tolist()]
        all_done = all(pool.done for pools in state["pools"] for pool in pools)
        if all_done or bool(request.criteria(sequences, processed_all).all()):
            break
        step_ids = sequences[:, -1:]
    return finalize(state, sequences, returned, prompt_length, config.max_length, scores_seen, logits_seen, cache)


def finalize(state, sequences, returned, prompt_length, max_length, scores_seen, logits_seen, cache):
    """Pool the running beams of unfinished groups, pick the best `returned` per prompt over all groups."""
    beams, size, eos = state["beams"], state["group_size"], state["eos_order"]
    best, best_scores = [], []
    for prompt, pools in enumerate(state["pools"]):
        for group, pool in enumerate(pools):
            if not pool.done:
                for i in range(size):
                    row = prompt * beams + group * size + i
                    pool.add(sequences[row], float(state["scores"][prompt, group * size + i]),
                             sequences.shape[1] - prompt_length, state["ancestry"][row])
        candidates = sorted((beam for pool in pools for beam in pool.beams), key=lambda beam: beam[0], reverse=True)
        best += [(tokens, ancestry, eos_follows) for _, tokens, ancestry, eos_follows in candidates[:returned]]
        best_scores += [beam[0] for beam in candidates[:returned]]
    lengths = [len(tokens) for tokens, _, _ in best]
    width = min(max(lengths) + 1, max_length)
    output = torch.full((len(best), width), state["pad"], dtype=torch.long, device=sequences.device)
    steps = max(len(ancestry) for _, ancestry, _ in best)
    beam_indices = torch.full((len(best), steps), -1, dtype=torch.long, device=sequences.device)
    for i, (tokens, ancestry, eos_follows) in enumerate(best):
        output[i, :len(tokens)] = tokens
        beam_indices[i, :len(ancestry)] = torch.tensor(ancestry, dtype=torch.long)
        if len(tokens) < width and eos and eos_follows:
            output[i, len(tokens)] = eos[0]
    return GenerateBeamDecoderOnlyOutput(
        sequences=output, sequences_scores=torch.tensor(best_scores) if scores_seen else None,
        scores=tuple(scores_seen) or None, logits=tuple(logits_seen) or None, beam_indices=beam_indices,
        past_key_values=cache)
