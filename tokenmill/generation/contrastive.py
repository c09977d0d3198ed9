"""Contrastive search (Su et al. 2022) and DoLa decoding (Chuang et al. 2023), kept native after transformers
moved both out of its core.

Contrastive search: among the top_k candidates, pick argmax of (1 - alpha) * p(v) - alpha * max_j cos(h_v, h_j),
h_j being the last-layer hidden states of the context. Each step runs the k candidates as one batch over a
k-fold copy of the cache (Cache.batch_repeat_interleave) and keeps the chosen rows (Cache.reorder_cache).

DoLa: contrast the final layer's next-token log-probabilities with an earlier ("premature") layer's, read through
lm_head alone, as the paper's code and transformers 4.55 do (no final norm); the premature layer is the candidate
whose distribution is furthest from the final one (Jensen-Shannon, averaged over the batch as transformers does),
and only tokens within 10x of the final layer's top probability are kept.
"""

from __future__ import annotations

import math

import torch

from .generate import GenerationRequest, _sample_next, positions_from_mask

RELATIVE_TOP = 0.1  # DoLa's adaptive plausibility constraint
BASE_FILTER = -1e-3  # what the premature layer's dropped tokens hold (DoLa's reference code)


# ---------------- contrastive search ----------------

def degeneration_penalty(context_hidden: torch.Tensor, context_mask: torch.Tensor,
                         candidate_hidden: torch.Tensor) -> torch.Tensor:
    """context_hidden [b, t, h] (mask [b, t]), candidate_hidden [b, k, h] → max cosine similarity [b, k]."""
    context = context_hidden / context_hidden.norm(dim=-1, keepdim=True)
    candidates = candidate_hidden / candidate_hidden.norm(dim=-1, keepdim=True)
    cosine = candidates @ context.transpose(1, 2)  # [b, k, t]
    cosine = cosine.masked_fill(~context_mask.bool()[:, None, :], -1.0)  # padding never counts as a repeat
    return cosine.max(dim=-1).values


def contrastive_choice(top_probs: torch.Tensor, penalty: torch.Tensor, alpha: float) -> torch.Tensor:
    """Index [b] of the candidate maximising (1 - alpha) * p - alpha * penalty."""
    return ((1.0 - alpha) * top_probs - alpha * penalty).argmax(dim=-1)


def _forward(model, request, step_ids, attention_mask, output_hidden_states=True):
    positions = positions_from_mask(attention_mask)[:, -step_ids.shape[1]:]
    return model(input_ids=step_ids, attention_mask=attention_mask, position_ids=positions,
                 past_key_values=request.cache, use_cache=True, logits_to_keep=1,
                 output_hidden_states=output_hidden_states)


def contrastive_search_loop(model, request: GenerationRequest):
    config, cache = request.config, request.cache
    alpha, k = float(config.penalty_alpha), int(config.top_k)
    input_ids, attention_mask = request.input_ids, request.attention_mask
    batch = input_ids.shape[0]
    out = _forward(model, request, input_ids[:, cache.get_seq_length():], attention_mask)
    context_hidden = out.hidden_states[-1].float()
    if context_hidden.shape[1] != attention_mask.shape[1]:
        raise ValueError("contrastive search needs the whole prompt in one pass (no pre-filled cache)")
    logits = out.logits[:, -1, :].float()
    unfinished = torch.ones(batch, dtype=torch.bool, device=input_ids.device)
    pad = config.pad_token_id if config.pad_token_id is not None else 0
    scores_seen, logits_seen = [], []
    rows = torch.arange(batch, device=input_ids.device)
    while True:
        scores = request.processors(input_ids, logits.clone())
        top_probs, top_ids = torch.softmax(scores, dim=-1).topk(k, dim=-1)  # [b, k]
        cache.batch_repeat_interleave(k)
        expanded_mask = torch.cat([attention_mask, attention_mask.new_ones(batch, 1)], dim=-1)
        candidates = _forward(model, request, top_ids.reshape(-1, 1), expanded_mask.repeat_interleave(k, dim=0))
        candidate_hidden = candidates.hidden_states[-1][:, -1, :].float().view(batch, k, -1)
        penalty = degeneration_penalty(context_hidden, attention_mask, candidate_hidden)
        chosen = contrastive_choice(top_probs, penalty, alpha)
        cache.reorder_cache(rows * k + chosen)
        next_tokens = torch.where(unfinished, top_ids[rows, chosen], torch.full_like(chosen, pad))
        if config.output_scores:
            scores_seen.append(scores)
        if config.output_logits:
            logits_seen.append(logits)
        input_ids = torch.cat([input_ids, next_tokens[:, None]], dim=-1)
        attention_mask = expanded_mask
        context_hidden = torch.cat([context_hidden, candidate_hidden[rows, chosen][:, None]], dim=1)
        logits = candidates.logits[:, -1, :].float().view(batch, k, -1)[rows, chosen]
        if request.streamer is not None:
            request.streamer.put(next_tokens.cpu())
        unfinished = unfinished & ~request.criteria(input_ids, scores)
        if not bool(unfinished.any()):
            break
    return input_ids, tuple(scores_seen) or None, tuple(logits_seen) or None


# ---------------- DoLa ----------------

def dola_start_layer(num_layers: int, tied_embeddings: bool) -> int:
    """With tied embeddings the embedding output read through lm_head is a poor early exit: skip it (transformers)."""
    if not tied_embeddings:
        return 0
    return 2 if num_layers > 2 else (1 if num_layers == 2 else 0)


def dola_candidate_layers(dola_layers, num_layers: int, tied_embeddings: bool) -> list[int]:
    """Indices into hidden_states (0 = embeddings) to contrast with, per transformers' 'low'/'high' presets."""
    start = dola_start_layer(num_layers, tied_embeddings)
    if dola_layers == "low":
        if start == num_layers // 2:
            return [start]
        return list(range(start, num_layers // 2, 2)) if num_layers <= 40 else list(range(start, 20, 2))
    if dola_layers == "high":
        return list(range(num_layers // 2, num_layers, 2)) if num_layers <= 40 else \
            list(range(num_layers - 20, num_layers, 2))
    if isinstance(dola_layers, int) and not isinstance(dola_layers, bool):
        dola_layers = [dola_layers]
    if isinstance(dola_layers, (list, tuple)) and all(isinstance(i, int) for i in dola_layers):
        layers = [i for i in dola_layers if 0 <= i < num_layers]
        if layers:
            return layers
    raise ValueError(f"dola_layers must be 'low', 'high' or layer indices below {num_layers}, got {dola_layers!r}")


def relative_top_filter(final_log_probs: torch.Tensor, base_log_probs: torch.Tensor, min_tokens_to_keep: int = 1):
    """Keep tokens whose final-layer probability is at least RELATIVE_TOP times the top one. Dropped tokens get
    -inf in the final scores and a finite value in the base, so their contrast is -inf rather than NaN."""
    kth_best = final_log_probs.sort(dim=-1, descending=True).values[..., min_tokens_to_keep - 1:min_tokens_to_keep]
    threshold = final_log_probs.max(dim=-1, keepdim=True).values + math.log(RELATIVE_TOP)
    dropped = final_log_probs < torch.minimum(kth_best, threshold)
    return final_log_probs.masked_fill(dropped, float("-inf")), base_log_probs.masked_fill(dropped, BASE_FILTER)


def jensen_shannon(final_log_probs: torch.Tensor, layer_log_probs: torch.Tensor) -> torch.Tensor:
    """Divergence per (layer, row): final [b, v], layers [L, b, v] → [L, b]. As DoLa's reference code (and
    transformers' port) computes it: 0.5 * (KL(M || final) + KL(M || layer)), M the mean distribution,
    averaged over the vocabulary."""
    mixture = 0.5 * (final_log_probs.exp()[None] + layer_log_probs.exp())
    log_mixture = torch.log(mixture)
    kl_final = (mixture * (log_mixture - final_log_probs[None])).mean(-1)
    kl_layer = (mixture * (log_mixture - layer_log_probs)).mean(-1)
    return 0.5 * (kl_final + kl_layer)


def dola_contrast(final_logits: torch.Tensor, premature_logits: torch.Tensor) -> torch.Tensor:
    """final_logits [b, v], premature_logits [L, b, v] → contrasted scores [b, v]."""
    final = torch.log_softmax(final_logits.float(), dim=-1)
    layers = torch.log_softmax(premature_logits.float(), dim=-1)
    # one premature layer for the whole batch, the most divergent on average (transformers' choice)
    chosen = int(jensen_shannon(final, layers).mean(-1).argmax()) if layers.shape[0] > 1 else 0
    final, base = relative_top_filter(final, layers[chosen])
    return final - base


def early_exit_logits(model, hidden: torch.Tensor) -> torch.Tensor:
    """An intermediate hidden state read through lm_head alone (DoLa's reference code and transformers)."""
    return model.lm_head(hidden).float()


def dola_loop(model, request: GenerationRequest):
    config = request.config
    layers = dola_candidate_layers(config.dola_layers, model.config.num_hidden_layers,
                                   bool(model.config.tie_word_embeddings))
    input_ids, attention_mask = request.input_ids, request.attention_mask
    unfinished = torch.ones(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
    pad = config.pad_token_id if config.pad_token_id is not None else 0
    step_ids = input_ids[:, request.cache.get_seq_length():]
    scores_seen, logits_seen = [], []
    while True:
        out = _forward(model, request, step_ids, attention_mask)
        final_logits = out.logits[:, -1, :].float()
        premature = torch.stack([early_exit_logits(model, out.hidden_states[i][:, -1, :]) for i in layers])
        scores = request.processors(input_ids, dola_contrast(final_logits, premature))
        chosen = _sample_next(scores, config.do_sample, model.execution_policy.ops)
        next_tokens = torch.where(unfinished, chosen, torch.full_like(unfinished, pad, dtype=torch.long))
        if config.output_scores:
            scores_seen.append(scores)
        if config.output_logits:
            logits_seen.append(final_logits)
        input_ids = torch.cat([input_ids, next_tokens[:, None]], dim=-1)
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones(attention_mask.shape[0], 1)], dim=-1)
        if request.streamer is not None:
            request.streamer.put(next_tokens.cpu())
        unfinished = unfinished & ~request.criteria(input_ids, scores)
        if not bool(unfinished.any()):
            break
        step_ids = next_tokens[:, None]
    return input_ids, tuple(scores_seen) or None, tuple(logits_seen) or None
