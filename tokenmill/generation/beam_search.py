"""Beam search and beam sampling with transformers' exact semantics (vectorised, static-shaped state).

Per batch item the search keeps `num_beams` running hypotheses and the `num_beams` best finished ones.
Each step considers K = max(2, 1 + #eos) * num_beams candidates so that enough unfinished ones remain even if
the best ones all end. Finished scores are divided by generated_length ** length_penalty. The KV cache is
reordered through the Cache protocol (`reorder_cache`) to follow the surviving beams.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .generate import GenerationRequest, _as_list, positions_from_mask
from .outputs import GenerateBeamDecoderOnlyOutput

FINISHED_PENALTY = -1.0e9  # what transformers adds to take a candidate out of contention


def gather_beams(tensor: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """tensor [batch, n, ...], index [batch, m] → [batch, m, ...]."""
    expanded = index.reshape(*index.shape, *([1] * (tensor.dim() - 2))).expand(*index.shape, *tensor.shape[2:])
    return tensor.gather(1, expanded)


@dataclass
class BeamState:
    running_sequences: torch.Tensor  # [batch, beams, max_length]
    running_scores: torch.Tensor  # [batch, beams] summed log-probs
    running_indices: torch.Tensor  # [batch, beams, max_new] flat beam row each token came from, -1 unset
    sequences: torch.Tensor  # finished hypotheses, same layout
    scores: torch.Tensor  # [batch, beams] length-penalised scores of finished hypotheses
    beam_indices: torch.Tensor
    is_finished: torch.Tensor  # [batch, beams] slot holds a finished hypothesis
    improvable: torch.Tensor  # [batch, 1] running beams may still beat the worst finished one

    @classmethod
    def start(cls, input_ids: torch.Tensor, batch: int, beams: int, max_length: int, fill: int) -> "BeamState":
        prompt_length, device = input_ids.shape[1], input_ids.device
        running = torch.full((batch, beams, max_length), fill, dtype=torch.long, device=device)
        running[:, :, :prompt_length] = input_ids.view(batch, beams, prompt_length)
        scores = torch.zeros(batch, beams, device=device)
        scores[:, 1:] = FINISHED_PENALTY  # only the first beam expands at step one: all beams are identical
        indices = torch.full((batch, beams, max_length - prompt_length), -1, dtype=torch.long, device=device)
        return cls(running, scores, indices, running.clone(), torch.full_like(scores, FINISHED_PENALTY),
                   indices.clone(), torch.zeros(batch, beams, dtype=torch.bool, device=device),
                   torch.ones(batch, 1, dtype=torch.bool, device=device))


def output_fill_value(config) -> int:
    """Padding for hypotheses shorter than the longest returned one (transformers: pad, else eos, else -1)."""
    eos = _as_list(config.eos_token_id)
    if not eos:
        return -1
    return config.pad_token_id if config.pad_token_id else eos[0]


def sample_candidates(accumulated: torch.Tensor, keep: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw `keep` continuations without replacement, returned best-first by accumulated log-prob."""
    flat_index = torch.multinomial(torch.softmax(accumulated, dim=-1), num_samples=keep)
    log_probs = accumulated.gather(1, flat_index)
    # best-first like transformers: the first `beams` slots are the ones allowed to join the finished pool
    log_probs, order = log_probs.sort(dim=-1, descending=True)
    return log_probs, flat_index.gather(1, order)


def top_candidates(state: BeamState, accumulated: torch.Tensor, cur_len: int, prompt_length: int,
                   keep: int, do_sample: bool):
    """accumulated [batch, beams * vocab] → the `keep` best (or sampled) continuations over all beams."""
    batch, beams = state.running_scores.shape
    if do_sample:
        log_probs, flat_index = sample_candidates(accumulated, keep)
    else:
        log_probs, flat_index = accumulated.topk(keep, dim=1)
    vocab = accumulated.shape[-1] // beams
    source_beam, token = flat_index // vocab, flat_index % vocab
    sequences = gather_beams(state.running_sequences, source_beam)
    sequences[:, :, cur_len] = token
    indices = gather_beams(state.running_indices, source_beam)
    indices[:, :, cur_len - prompt_length] = source_beam + torch.arange(batch, device=token.device)[:, None] * beams
    return log_probs, sequences, indices


def advance_running(state: BeamState, log_probs, sequences, indices, hits) -> None:
    """Keep the best `beams` candidates that did not just stop as the next running beams."""
    beams = state.running_scores.shape[1]
    open_scores = log_probs + hits.float() * FINISHED_PENALTY
    best = open_scores.topk(beams, dim=1).indices
    state.running_sequences = gather_beams(sequences, best)
    state.running_scores = gather_beams(open_scores, best)
    state.running_indices = gather_beams(indices, best)


def merge_finished(state: BeamState, log_probs, sequences, indices, hits, generated: int,
                   length_penalty: float, early_stopping) -> None:
    """Candidates among the top `beams` that just stopped join the finished pool if they score high enough."""
    beams = state.scores.shape[1]
    in_top = torch.zeros_like(hits)
    in_top[:, :beams] = True
    just_finished = hits & in_top
    scores = log_probs / (generated ** length_penalty)
    pool_full = state.is_finished.all(dim=-1, keepdim=True) & (early_stopping is True)
    scores = scores + pool_full.float() * FINISHED_PENALTY
    scores = scores + (~state.improvable).float() * FINISHED_PENALTY
    scores = scores + (~just_finished).float() * FINISHED_PENALTY
    merged_scores = torch.cat([state.scores, scores], dim=1)
    best = merged_scores.topk(beams, dim=1).indices
    state.sequences = gather_beams(torch.cat([state.sequences, sequences], dim=1), best)
    state.scores = gather_beams(merged_scores, best)
    state.beam_indices = gather_beams(torch.cat([state.beam_indices, indices], dim=1), best)
    state.is_finished = gather_beams(torch.cat([state.is_finished, just_finished], dim=1), best)


def update_improvable(state: BeamState, generated: int, max_new: int, length_penalty: float,
                      early_stopping) -> None:
    """Can the best running beam still beat the worst finished one? (transformers' heuristic, sticky.)"""
    hypothetical = max_new if (early_stopping == "never" and length_penalty > 0.0) else generated
    best_running = state.running_scores[:, :1] / (hypothetical ** length_penalty)
    worst_finished = torch.where(state.is_finished, state.scores.min(dim=1, keepdim=True).values,
                                 torch.full_like(state.scores, FINISHED_PENALTY))
    state.improvable = state.improvable & (best_running > worst_finished).any(dim=-1, keepdim=True)


def should_continue(state: BeamState, hits: torch.Tensor, early_stopping) -> bool:
    all_done = bool(state.is_finished.all()) and early_stopping is True
    return bool(state.improvable.any()) and not all_done and not bool(hits.all())


def check_beam_config(config, batch_rows: int) -> tuple[int, int]:
    beams = config.num_beams
    returned = config.num_return_sequences or 1
    if returned > beams:
        raise ValueError(f"num_return_sequences ({returned}) must be at most num_beams ({beams})")
    if batch_rows % beams:
        raise ValueError(f"beam search got {batch_rows} rows, not a multiple of num_beams={beams}")
    if getattr(config, "low_memory", False):
        raise ValueError("low_memory=True is not supported by beam search")
    return beams, returned


def beam_search_loop(model, request: GenerationRequest) -> GenerateBeamDecoderOnlyOutput:
    """request.input_ids / attention_mask already hold each prompt `num_beams` times (row-interleaved)."""
    config, cache = request.config, request.cache
    if request.streamer is not None:
        raise ValueError("a streamer cannot be used with beam search; set num_beams=1")
    beams, returned = check_beam_config(config, request.input_ids.shape[0])
    batch, prompt_length = request.input_ids.shape[0] // beams, request.input_ids.shape[1]
    length_penalty = 1.0 if config.length_penalty is None else config.length_penalty
    early_stopping = False if config.early_stopping is None else config.early_stopping
    keep = max(2, 1 + len(_as_list(config.eos_token_id))) * beams
    state = BeamState.start(request.input_ids, batch, beams, config.max_length, output_fill_value(config))
    attention_mask = request.attention_mask
    step_ids = request.input_ids[:, cache.get_seq_length():]
    scores_seen, logits_seen = [], []
    cur_len = prompt_length
    while True:
        positions = positions_from_mask(attention_mask)[:, -step_ids.shape[1]:]
        out = model(input_ids=step_ids, attention_mask=attention_mask, position_ids=positions,
                    past_key_values=cache, use_cache=True, logits_to_keep=1)
        logits = out.logits[:, -1, :].to(dtype=torch.float32, copy=True)
        flat_running = state.running_sequences[:, :, :cur_len].reshape(batch * beams, cur_len)
        log_probs = request.processors(flat_running, torch.log_softmax(logits, dim=-1))
        if config.output_scores:
            scores_seen.append(log_probs.clone())
        if config.output_logits:
            logits_seen.append(logits)
        accumulated = (log_probs.view(batch, beams, -1) + state.running_scores[:, :, None]).view(batch, -1)
        candidates = top_candidates(state, accumulated, cur_len, prompt_length, keep, config.do_sample)
        hits = request.criteria(candidates[1][:, :, :cur_len + 1].reshape(batch * keep, -1), log_probs)
        hits = hits.view(batch, keep)
        advance_running(state, *candidates, hits)
        merge_finished(state, *candidates, hits, cur_len + 1 - prompt_length, length_penalty, early_stopping)
        cache.reorder_cache(state.running_indices[:, :, cur_len - prompt_length].reshape(-1))
        cur_len += 1
        update_improvable(state, cur_len - prompt_length, config.max_length - prompt_length,
                          length_penalty, early_stopping)
        if not should_continue(state, hits, early_stopping):
            break
        step_ids = state.running_sequences[:, :, cur_len - 1].reshape(-1, 1)
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones(attention_mask.shape[0], 1)], dim=-1)
    return finish(state, returned, prompt_length, scores_seen, logits_seen, cache)


def finish(state: BeamState, returned: int, prompt_length: int, scores_seen, logits_seen, cache):
    """Best `returned` finished hypotheses per prompt, cropped to the longest of them."""
    sequences = state.sequences[:, :returned].flatten(0, 1)
    sequences_scores = state.scores[:, :returned].flatten(0, 1)
    beam_indices = state.beam_indices[:, :returned].flatten(0, 1)
    generated = int((beam_indices >= 0).sum(dim=1).max())
    return GenerateBeamDecoderOnlyOutput(
        sequences=sequences[:, :prompt_length + generated],
        sequences_scores=sequences_scores if scores_seen else None,
        scores=tuple(scores_seen) or None, logits=tuple(logits_seen) or None,
        beam_indices=beam_indices[:, :generated], past_key_values=cache,
    )
