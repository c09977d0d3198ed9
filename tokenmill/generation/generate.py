"""generate(): argument resolution shared by every strategy, and the greedy / multinomial sampling loop.

Layering: `decode_steps` yields one token per row per step; `generate` drives it, feeds streamers and
assembles transformers-shaped outputs. Beam search and other strategies plug in through `STRATEGIES`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch

from ..cache.factory import make_cache
from .config import GenerationConfig
from .logits_process import LogitsProcessorList, build_logits_processor
from .outputs import GenerateDecoderOnlyOutput
from .stopping_criteria import StoppingCriteriaList, build_stopping_criteria


@dataclass
class GenerationRequest:
    """Everything a decoding strategy needs, resolved once from generate()'s arguments."""

    input_ids: torch.Tensor  # [batch * num_return_sequences, prompt_len]
    attention_mask: torch.Tensor
    config: GenerationConfig
    processors: LogitsProcessorList
    criteria: StoppingCriteriaList
    cache: object
    streamer: object | None


def _as_list(value) -> list[int]:
    if value is None:
        return []
    if isinstance(value, torch.Tensor):
        return value.flatten().tolist()
    return list(value) if isinstance(value, (list, tuple)) else [int(value)]


def default_attention_mask(input_ids: torch.Tensor, config: GenerationConfig) -> torch.Tensor:
    """As transformers: infer padding from pad_token_id only when it is present and differs from eos."""
    pad = config.pad_token_id
    eos = _as_list(config.eos_token_id)
    if pad is not None and pad not in eos and bool((input_ids == pad).any()):
        return (input_ids != pad).long()
    return torch.ones_like(input_ids, dtype=torch.long)


def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Per-row positions that skip left padding (padding slots get a harmless 1)."""
    positions = attention_mask.long().cumsum(-1) - 1
    return positions.masked_fill(attention_mask == 0, 1)


def _sample_next(scores: torch.Tensor, do_sample: bool) -> torch.Tensor:
    if do_sample:
        probs = torch.softmax(scores, dim=-1)
        return torch.multinomial(probs, num_samples=1).squeeze(1)
    return scores.argmax(dim=-1)


def decode_steps(model, request: GenerationRequest) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Yield (next_tokens [batch], raw_logits, scores) per step until every row has stopped."""
    config = request.config
    input_ids, attention_mask, cache = request.input_ids, request.attention_mask, request.cache
    pad = config.pad_token_id if config.pad_token_id is not None else 0
    unfinished = torch.ones(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
    step_ids = input_ids[:, cache.get_seq_length():]
    while True:
        positions = positions_from_mask(attention_mask)[:, -step_ids.shape[1]:]
        out = model(input_ids=step_ids, attention_mask=attention_mask, position_ids=positions,
                    past_key_values=cache, use_cache=True, logits_to_keep=1)
        raw_logits = out.logits[:, -1, :].to(dtype=torch.float32, copy=True)
        scores = request.processors(input_ids, raw_logits)
        next_tokens = _sample_next(scores, config.do_sample)
        next_tokens = torch.where(unfinished, next_tokens, torch.full_like(next_tokens, pad))
        input_ids = torch.cat([input_ids, next_tokens[:, None]], dim=-1)
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones(attention_mask.shape[0], 1)], dim=-1)
        unfinished = unfinished & ~request.criteria(input_ids, scores)
        yield next_tokens, raw_logits, scores
        if not bool(unfinished.any()):
            return
        step_ids = next_tokens[:, None]


def sample_loop(model, request: GenerationRequest):
    sequences = request.input_ids
    scores_seen, logits_seen = [], []
    for next_tokens, raw_logits, scores in decode_steps(model, request):
        sequences = torch.cat([sequences, next_tokens[:, None]], dim=-1)
        if request.streamer is not None:
            request.streamer.put(next_tokens.cpu())
        if request.config.output_scores:
            scores_seen.append(scores)
        if request.config.output_logits:
            logits_seen.append(raw_logits)
    return sequences, tuple(scores_seen) or None, tuple(logits_seen) or None


STRATEGIES = {"sample": sample_loop}


def _resolve_config(model, generation_config, kwargs) -> tuple[GenerationConfig, dict]:
    base = generation_config or getattr(model, "generation_config", None) or GenerationConfig()
    config = base.copy()
    unused = config.update(**kwargs)
    if config.pad_token_id is None and config.eos_token_id is not None:
        config.pad_token_id = _as_list(config.eos_token_id)[0]
    config.validate()
    return config, unused


def _max_length(config: GenerationConfig, prompt_length: int) -> None:
    if config.max_new_tokens is not None:
        config.max_length = prompt_length + config.max_new_tokens
    if config.min_new_tokens is not None:
        config.min_length = prompt_length + config.min_new_tokens


class GenerationMixin:
    """Adds transformers' generate() to a CausalLM."""

    @torch.inference_mode()
    def generate(
        self,
        inputs: torch.Tensor | None = None,
        generation_config: GenerationConfig | None = None,
        logits_processor: LogitsProcessorList | None = None,
        stopping_criteria: StoppingCriteriaList | None = None,
        streamer=None,
        tokenizer=None,
        attention_mask: torch.Tensor | None = None,
        past_key_values=None,
        **kwargs,
    ):
        input_ids = kwargs.pop("input_ids", inputs)
        if input_ids is None:
            raise ValueError("generate() needs input_ids (a [batch, length] tensor of token ids)")
        if input_ids.dim() == 1:
            input_ids = input_ids[None]
        config, unused = _resolve_config(self, generation_config, kwargs)
        if unused:
            raise ValueError(f"generate() got arguments it does not use: {sorted(unused)}")
        input_ids = input_ids.to(self.device)
        if attention_mask is None:
            attention_mask = default_attention_mask(input_ids, config)
        attention_mask = attention_mask.to(self.device)
        prompt_length = input_ids.shape[1]
        _max_length(config, prompt_length)
        if prompt_length >= config.max_length:
            raise ValueError(
                f"the prompt has {prompt_length} tokens, which leaves no room under max_length="
                f"{config.max_length}; set max_new_tokens"
            )
        context = self.config.max_position_embeddings
        if prompt_length > context:
            raise ValueError(
                f"the prompt has {prompt_length} tokens, more than the model's context length of {context}"
            )
        repeats = config.num_return_sequences or 1
        if repeats > 1:
            input_ids = input_ids.repeat_interleave(repeats, dim=0)
            attention_mask = attention_mask.repeat_interleave(repeats, dim=0)
        if streamer is not None:
            streamer.put(input_ids.cpu())
        cache = past_key_values if past_key_values is not None else make_cache(
            config.cache_implementation, self, input_ids.shape[0], config.max_length)
        request = GenerationRequest(
            input_ids=input_ids, attention_mask=attention_mask, config=config,
            processors=build_logits_processor(config, prompt_length, logits_processor),
            criteria=build_stopping_criteria(config, tokenizer, stopping_criteria),
            cache=cache, streamer=streamer,
        )
        strategy = STRATEGIES[self._strategy_name(config)]
        try:
            sequences, scores, logits = strategy(self, request)
        finally:
            if streamer is not None:
                streamer.end()
        if not config.return_dict_in_generate:
            return sequences
        return GenerateDecoderOnlyOutput(sequences=sequences, scores=scores, logits=logits, past_key_values=cache)

    @staticmethod
    def _strategy_name(config: GenerationConfig) -> str:
        if (config.num_beams or 1) > 1:
            if "beam" not in STRATEGIES:
                raise NotImplementedError("beam search (num_beams > 1) is not available yet")
            return "beam"
        return "sample"
