"""The fields of GenerationConfig (their effective defaults) and the value checks shared by the config and its
validation."""

from __future__ import annotations

import numbers
from typing import Any

# The effective default of every field transformers' GenerationConfig knows about (its
# `_get_default_generation_params` values; None where transformers leaves the field unset).
DEFAULTS: dict[str, Any] = {
    # length
    "max_length": 20,
    "max_new_tokens": None,
    "min_length": 0,
    "min_new_tokens": None,
    "early_stopping": False,
    "max_time": None,
    "stop_strings": None,
    # strategy
    "do_sample": False,
    "num_beams": 1,
    "use_mtp": None,
    # cache
    "use_cache": True,
    "cache_implementation": None,
    "cache_config": None,
    "max_cache_len": None,
    # logits manipulation
    "temperature": 1.0,
    "top_k": 50,
    "top_p": 1.0,
    "min_p": None,
    "top_h": None,
    "typical_p": 1.0,
    "epsilon_cutoff": 0.0,
    "eta_cutoff": 0.0,
    "repetition_penalty": 1.0,
    "encoder_repetition_penalty": 1.0,
    "length_penalty": 1.0,
    "no_repeat_ngram_size": 0,
    "bad_words_ids": None,
    "renormalize_logits": False,
    "forced_bos_token_id": None,
    "forced_eos_token_id": None,
    "remove_invalid_values": False,
    "exponential_decay_length_penalty": None,
    "suppress_tokens": None,
    "begin_suppress_tokens": None,
    "sequence_bias": None,
    "token_healing": None,
    "guidance_scale": None,
    "watermarking_config": None,
    # outputs
    "num_return_sequences": 1,
    "output_attentions": False,
    "output_hidden_states": False,
    "output_scores": False,
    "output_logits": None,
    "return_dict_in_generate": False,
    # special tokens
    "pad_token_id": None,
    "bos_token_id": None,
    "eos_token_id": None,
    # encoder-decoder
    "encoder_no_repeat_ngram_size": 0,
    "decoder_start_token_id": None,
    # assisted generation
    "is_assistant": None,
    "num_assistant_tokens": 20,
    "num_assistant_tokens_schedule": "constant",
    "assistant_confidence_threshold": 0.4,
    "prompt_lookup_num_tokens": None,
    "max_matching_ngram_size": None,
    "assistant_early_exit": None,
    "assistant_lookbehind": 10,
    "target_lookbehind": 10,
    "assistant_ensemble_weight": None,
    "speculation_type": None,
    # performance
    "compile_config": None,
    "disable_compile": None,
    "prefill_chunk_size": None,
    "continuous_batching_config": None,
    # moved to the Hub in transformers, still read
    "low_memory": None,
    "penalty_alpha": None,
    "dola_layers": None,
    "diversity_penalty": 0.0,
    "num_beam_groups": 1,
    "constraints": None,
    "force_words_ids": None,
}

# Keys of generation_config.json that are bookkeeping, not parameters.
METADATA_FIELDS = ("transformers_version", "_from_model_config", "_commit_hash")

# Arguments of generate() that do not belong in a config (transformers raises for them too).
GENERATE_ARGUMENTS = (
    "logits_processor", "stopping_criteria", "prefix_allowed_tokens_fn", "synced_gpus", "assistant_model",
    "streamer", "negative_prompt_ids", "negative_prompt_attention_mask",
)


def is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def token_id_list(value) -> list[int] | None:
    """An int / list of ints / tensor of ids as a list of ints (None stays None)."""
    if value is None:
        return None
    if hasattr(value, "tolist") and not isinstance(value, (list, tuple)):
        value = value.tolist()
    if is_int(value):
        return [int(value)]
    return [int(v) for v in value]
