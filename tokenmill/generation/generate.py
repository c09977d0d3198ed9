"""generate(): argument resolution shared by every strategy, and the greedy / multinomial sampling loop.

Layering: `decode_steps` yields one token per row per step; `generate` drives it, feeds streamers and
assembles transformers-shaped outputs. Beam search and other strategies plug in through `STRATEGIES`.
"""

from __future__ import annotations

import importlib
import warnings
from dataclasses import dataclass
from typing import Iterator

import torch

from ..cache.factory import make_cache
from .config import GenerationConfig
from .logits_process import LogitsProcessorList, build_logits_processor
from .non_finite import logits_are_finite, non_finite_error
from .outputs import GenerateDecoderOnlyOutput
from .sampling import draw
from .static_graph import static_graph_for
from .stopping_criteria import StoppingCriteriaList, build_stopping_criteria
from .vocab_reduce import argmax_rows


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
    tokenizer: object | None = None
    assistant_model: object | None = None  # assisted decoding's drafter (see speculative.py)
    assistant_tokenizer: object | None = None


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


def rescales_past_context(config) -> bool:
    """Dynamic NTK rope recomputes its frequencies for sequences past max_position_embeddings: serving those
    is its purpose (transformers only warns there); any other model is refused a longer prompt."""
    params = config.rope_parameters or {}
    kinds = {params.get("rope_type")} | {value.get("rope_type") for value in params.values() if isinstance(value, dict)}
    return "dynamic" in kinds


def _sample_next(scores: torch.Tensor, do_sample: bool, ops) -> torch.Tensor:
    """ops: the model's kernel set, which also takes greedy decoding's argmax."""
    if do_sample:
        return draw(torch.softmax(scores, dim=-1))
    return argmax_rows(scores, ops)


def decode_steps(model, request: GenerationRequest) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Yield (next_tokens [batch], raw_logits, scores) per step until every row has stopped."""
    config = request.config
    input_ids, attention_mask, cache = request.input_ids, request.attention_mask, request.cache
    pad = config.pad_token_id if config.pad_token_id is not None else 0
    unfinished = torch.ones(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
    step_ids = input_ids[:, cache.get_seq_length():]
    graph = static_graph_for(model, cache, attention_mask, config)  # None: every step eagerly
    step = 0
    while True:
        positions = positions_from_mask(attention_mask)[:, -step_ids.shape[1]:]
        logits = None
        if graph is not None and step > 0 and not graph.failed:
            logits = graph.logits(step_ids, positions)
        if logits is None:
            logits = model(input_ids=step_ids, attention_mask=attention_mask, position_ids=positions,
                           past_key_values=cache, use_cache=True, logits_to_keep=1).logits
        raw_logits = logits[:, -1, :].to(dtype=torch.float32, copy=True)
        if not logits_are_finite(raw_logits):  # before sampling, which would fail on NaN probabilities
            raise non_finite_error(model, raw_logits, input_ids, attention_mask, step)
        scores = request.processors(input_ids, raw_logits)
        next_tokens = _sample_next(scores, config.do_sample, model.execution_policy.ops)
        next_tokens = torch.where(unfinished, next_tokens, torch.full_like(next_tokens, pad))
        input_ids = torch.cat([input_ids, next_tokens[:, None]], dim=-1)
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones(attention_mask.shape[0], 1)], dim=-1)
        unfinished = unfinished & ~request.criteria(input_ids, scores)
        yield next_tokens, raw_logits, scores
        if not bool(unfinished.any()):
            return
        step_ids = next_tokens[:, None]
        step += 1


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
# strategies living in their own modules, imported on first use (they import this module's helpers)
LAZY_STRATEGIES = {
    "beam": ("beam_search", "beam_search_loop"),
    "group_beam": ("group_beam_search", "group_beam_search_loop"),
    "assisted": ("speculative", "assisted_loop"),
    "contrastive": ("contrastive", "contrastive_search_loop"),
    "dola": ("contrastive", "dola_loop"),
}
# strategies whose prompt rows are repeated num_beams times before prefill, as transformers does
BEAM_STRATEGIES = {"beam", "group_beam"}


def strategy_function(name: str):
    if name not in STRATEGIES and name in LAZY_STRATEGIES:
        module_name, function_name = LAZY_STRATEGIES[name]
        module = importlib.import_module(f"{__package__}.{module_name}")
        STRATEGIES[name] = getattr(module, function_name)
    return STRATEGIES[name]


def _resolve_config(model, generation_config, kwargs) -> tuple[GenerationConfig, dict]:
    base = generation_config or getattr(model, "generation_config", None) or GenerationConfig()
    config = base.copy()
    unused = config.update(**kwargs)
    if config.pad_token_id is None and config.eos_token_id is not None:
        config.pad_token_id = _as_list(config.eos_token_id)[0]
    config.validate()
    return config, unused


def _processors_with_watermark(model, config: GenerationConfig, prompt_length: int, user_processors,
                               attention_mask: torch.Tensor):
    """The config's processors; a watermarking_config becomes its processor (it needs the vocabulary size)."""
    watermarking = getattr(config, "watermarking_config", None)
    watermark = None
    if watermarking is not None:
        from .watermark import WatermarkLogitsProcessor

        watermark = WatermarkLogitsProcessor.from_config(watermarking, model.config.vocab_size, model.device)
    # the mask lets the repetition penalty ignore left padding, as transformers does
    return build_logits_processor(config, prompt_length, user_processors, watermark_processor=watermark,
                                  attention_mask=attention_mask, device=model.device)


def _max_length(config: GenerationConfig, prompt_length: int) -> None:
    if config.max_new_tokens is not None:
        config.max_length = prompt_length + config.max_new_tokens
    if config.min_new_tokens is not None:
        config.min_length = prompt_length + config.min_new_tokens


def _run_strategy(model, strategy, request: GenerationRequest, resilient: bool):
    """Run a strategy; if `resilient` and memory runs out, start over once with an offloaded cache."""
    from ..cache.offloaded import OffloadedCache, is_out_of_memory

    try:
        return strategy(model, request)
    except (RuntimeError, MemoryError) as error:
        if not resilient or not is_out_of_memory(error) or isinstance(request.cache, OffloadedCache):
            raise
    warnings.warn("generate() ran out of memory; retrying with the offloaded KV cache", RuntimeWarning)
    request.cache = OffloadedCache()
    return strategy(model, request)


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
        assistant_model = kwargs.pop("assistant_model", None)
        assistant_tokenizer = kwargs.pop("assistant_tokenizer", None)
        resilient = bool(kwargs.pop("resilient", False))  # on out-of-memory, retry with the offloaded cache
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
            message = f"the prompt has {prompt_length} tokens, more than the model's context length of {context}"
            if not rescales_past_context(self.config):
                raise ValueError(message)
            warnings.warn(f"{message}; dynamic rope rescales its frequencies for it", stacklevel=2)
        strategy_name = "assisted" if assistant_model is not None else self._strategy_name(config)
        if streamer is not None and strategy_name in BEAM_STRATEGIES:
            raise ValueError("a streamer cannot be used with beam search (num_beams > 1): beams change until the end")
        repeats = config.num_beams if strategy_name in BEAM_STRATEGIES else (config.num_return_sequences or 1)
        if repeats > 1:
            input_ids = input_ids.repeat_interleave(repeats, dim=0)
            attention_mask = attention_mask.repeat_interleave(repeats, dim=0)
        if streamer is not None:
            streamer.put(input_ids.cpu())
        cache = past_key_values if past_key_values is not None else make_cache(
            config.cache_implementation, self, input_ids.shape[0], config.max_length,
            getattr(config, "cache_config", None))
        request = GenerationRequest(
            input_ids=input_ids, attention_mask=attention_mask, config=config,
            processors=_processors_with_watermark(self, config, prompt_length, logits_processor, attention_mask),
            criteria=build_stopping_criteria(config, tokenizer, stopping_criteria),
            cache=cache, streamer=streamer, tokenizer=tokenizer,
            assistant_model=assistant_model, assistant_tokenizer=assistant_tokenizer,
        )
        strategy = strategy_function(strategy_name)
        try:
            result = _run_strategy(self, strategy, request, resilient and past_key_values is None)
            cache = request.cache
        finally:
            if streamer is not None:
                streamer.end()
        if not isinstance(result, tuple):  # a strategy with its own output class (beam search)
            return result if config.return_dict_in_generate else result.sequences
        sequences, scores, logits = result
        if not config.return_dict_in_generate:
            return sequences
        return GenerateDecoderOnlyOutput(sequences=sequences, scores=scores, logits=logits, past_key_values=cache)

    def compute_transition_scores(self, sequences, scores, beam_indices=None, normalize_logits=False):
        """transformers' method: per generated token score, following beam ancestry (see transition_scores)."""
        from .transition_scores import compute_transition_scores

        return compute_transition_scores(sequences, scores, beam_indices, normalize_logits)

    @staticmethod
    def _strategy_name(config: GenerationConfig) -> str:
        if (config.num_beams or 1) > 1:
            return "group_beam" if (getattr(config, "num_beam_groups", None) or 1) > 1 else "beam"
        if getattr(config, "prompt_lookup_num_tokens", None) or getattr(config, "assistant_early_exit", None):
            return "assisted"
        if getattr(config, "dola_layers", None) is not None:
            return "dola"
        if (getattr(config, "penalty_alpha", None) or 0) > 0 and (config.top_k or 0) > 1 and not config.do_sample:
            return "contrastive"
        return "sample"
