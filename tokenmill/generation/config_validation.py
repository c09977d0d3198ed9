"""GenerationConfig validation: every value generate() could not honour, and flags the strategy ignores."""

from __future__ import annotations

import logging
import math
import numbers

from .config_fields import DEFAULTS, GENERATE_ARGUMENTS, is_int

logger = logging.getLogger("tokenmill.generation.config")  # the config's own logger: its warnings read as the config's

_WARNED_PAD_IDS: set = set()  # warn once per value, not at every validate()

_SAMPLING_FLAGS = ("temperature", "top_p", "min_p", "top_h", "typical_p", "top_k", "epsilon_cutoff", "eta_cutoff")


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _check_range(problems, name, value, low, high, low_open, high_open):
    if value is None:
        return
    if not _is_number(value) or math.isnan(value):
        problems.append(f"`{name}` must be a number, got {value!r}")
        return
    too_low = value <= low if low_open else value < low
    too_high = value >= high if high_open else value > high
    if too_low or too_high:
        interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        problems.append(f"`{name}` must be in {interval}, got {value}")


def _check_int(problems, name, value, minimum):
    if value is None:
        return
    if not is_int(value) or value < minimum:
        problems.append(f"`{name}` must be an integer >= {minimum}, got {value!r}")


def _check_ids(problems, name, value, allow_list=True):
    if value is None:
        return
    values = value if (allow_list and isinstance(value, (list, tuple))) else [value]
    if hasattr(value, "tolist") and not isinstance(value, (list, tuple)):
        values = value.flatten().tolist() if hasattr(value, "flatten") else value.tolist()
    if isinstance(value, (list, tuple)) and len(value) == 0:
        problems.append(f"`{name}` must not be an empty list")
    if not all(is_int(v) and v >= 0 for v in values):
        problems.append(f"`{name}` must be a non-negative token id{' or a list of them' if allow_list else ''}, "
                        f"got {value!r}")


def problems_of(config) -> list[str]:
    p: list[str] = []
    # lengths
    if config.max_new_tokens is not None and (not is_int(config.max_new_tokens) or config.max_new_tokens <= 0):
        p.append(f"`max_new_tokens` must be greater than 0, but is {config.max_new_tokens!r}")
    _check_int(p, "max_length", config.max_length, 0)
    _check_int(p, "min_length", config.min_length, 0)
    _check_int(p, "min_new_tokens", config.min_new_tokens, 0)
    if config.max_time is not None and (not _is_number(config.max_time) or config.max_time <= 0):
        p.append(f"`max_time` must be a positive number of seconds, got {config.max_time!r}")
    if config.early_stopping not in (True, False, "never", None):
        p.append(f"`early_stopping` must be a boolean or 'never', but is {config.early_stopping!r}")
    if config.stop_strings is not None:
        strings = [config.stop_strings] if isinstance(config.stop_strings, str) else config.stop_strings
        if (not isinstance(strings, (list, tuple)) or not strings
                or not all(isinstance(s, str) and s for s in strings)):
            p.append(f"`stop_strings` must be a non-empty string or list of non-empty strings, "
                     f"got {config.stop_strings!r}")
    # strategy
    _check_int(p, "num_beams", config.num_beams, 1)
    _check_int(p, "num_return_sequences", config.num_return_sequences, 1)
    if is_int(config.num_return_sequences) and config.num_return_sequences > 1:
        if (config.num_beams or 1) == 1:
            if not config.do_sample:
                p.append("Greedy methods (do_sample != True) without beam search do not support "
                         f"`num_return_sequences` different than 1 (got {config.num_return_sequences})")
        elif is_int(config.num_beams) and config.num_return_sequences > config.num_beams:
            p.append(f"`num_return_sequences` ({config.num_return_sequences}) has to be smaller or equal to "
                     f"`num_beams` ({config.num_beams})")
    # sampling
    t = config.temperature
    if t is not None:
        if not _is_number(t) or math.isnan(t) or t < 0:
            p.append(f"`temperature` must be a non-negative number, got {t!r}")
        elif t == 0 and config.do_sample:
            p.append("`temperature` is 0 with do_sample=True; set do_sample=False for greedy decoding, "
                     "or use a strictly positive temperature")
    if config.top_k is not None and (not is_int(config.top_k) or config.top_k < 0):
        p.append(f"`top_k` must be a non-negative integer (0 disables it), got {config.top_k!r}")
    _check_range(p, "top_p", config.top_p, 0.0, 1.0, True, False)
    _check_range(p, "min_p", config.min_p, 0.0, 1.0, False, False)
    _check_range(p, "top_h", config.top_h, 0.0, 1.0, True, False)
    _check_range(p, "typical_p", config.typical_p, 0.0, 1.0, True, False)
    _check_range(p, "epsilon_cutoff", config.epsilon_cutoff, 0.0, 1.0, False, True)
    _check_range(p, "eta_cutoff", config.eta_cutoff, 0.0, 1.0, False, True)
    for name in ("repetition_penalty", "encoder_repetition_penalty"):
        value = getattr(config, name)
        if value is not None and (not _is_number(value) or not value > 0):
            p.append(f"`{name}` must be strictly positive (1.0 disables it), got {value!r}")
    _check_int(p, "no_repeat_ngram_size", config.no_repeat_ngram_size, 0)
    if config.bad_words_ids is not None:
        ok = isinstance(config.bad_words_ids, list) and config.bad_words_ids and all(
            isinstance(seq, list) and seq and all(is_int(t) and t >= 0 for t in seq) for seq in config.bad_words_ids)
        if not ok:
            p.append(f"`bad_words_ids` must be a non-empty list of non-empty lists of token ids, "
                     f"got {config.bad_words_ids!r}")
    if config.sequence_bias is not None:
        p.extend(_sequence_bias_problems(config.sequence_bias))
    for name in ("suppress_tokens", "begin_suppress_tokens"):
        value = getattr(config, name)
        if value is not None and (not isinstance(value, (list, tuple)) or
                                  not all(is_int(t) and t >= 0 for t in value)):
            p.append(f"`{name}` must be a list of token ids, got {value!r}")
    # special tokens
    _check_ids(p, "eos_token_id", config.eos_token_id)
    _check_ids(p, "bos_token_id", config.bos_token_id)
    _check_ids(p, "forced_eos_token_id", config.forced_eos_token_id)
    _check_ids(p, "forced_bos_token_id", config.forced_bos_token_id, allow_list=False)
    if config.pad_token_id is not None:
        if not is_int(config.pad_token_id):
            p.append(f"`pad_token_id` must be an integer token id, got {config.pad_token_id!r}")
        elif config.pad_token_id < 0 and config.pad_token_id not in _WARNED_PAD_IDS:
            _WARNED_PAD_IDS.add(config.pad_token_id)
            logger.warning("`pad_token_id` is negative (%s): batched generation with padding will fail",
                           config.pad_token_id)
    if isinstance(config.suppress_tokens, (list, tuple)):
        suppressed = set(config.suppress_tokens)
        for name in ("forced_bos_token_id", "forced_eos_token_id"):
            forced = getattr(config, name)
            if forced is None:
                continue
            forced_set = {forced} if is_int(forced) else set(forced) if isinstance(forced, (list, tuple)) else set()
            if forced_set and forced_set <= suppressed:
                p.append(f"every token in `{name}` ({sorted(forced_set)}) is also in `suppress_tokens`: "
                         "forcing a suppressed token leaves no valid token")
    for arg in GENERATE_ARGUMENTS:
        if arg in config.__dict__:
            p.append(f"`{arg}` is not a generation config field; pass it to generate() directly")
    return p


def _sequence_bias_problems(bias) -> list[str]:
    def ids_ok(ids):
        return len(ids) > 0 and all(is_int(t) and t >= 0 for t in ids)

    def pair_ok(entry):
        return (isinstance(entry, (list, tuple)) and len(entry) == 2 and isinstance(entry[0], (list, tuple))
                and ids_ok(entry[0]) and _is_number(entry[1]))

    if isinstance(bias, dict) and bias and all(isinstance(k, tuple) and ids_ok(k) and _is_number(v)
                                               for k, v in bias.items()):
        return []
    if isinstance(bias, list) and bias and all(pair_ok(entry) for entry in bias):
        return []
    message = ("`sequence_bias` must be a non-empty list of [token ids, bias] pairs (or a dict of tuple -> float), "
               f"got {bias!r}")
    return [message]


def ignored_flags(config) -> list[str]:
    notes = []
    if not config.do_sample:
        for name in _SAMPLING_FLAGS:
            value = getattr(config, name)
            if value is not None and value != DEFAULTS[name]:
                notes.append(f"`{name}`={value!r} is only used when do_sample=True")
    if (config.num_beams or 1) == 1:
        if config.early_stopping not in (None, False):
            notes.append(f"`early_stopping`={config.early_stopping!r} is only used with num_beams>1")
        if config.length_penalty not in (None, 1.0):
            notes.append(f"`length_penalty`={config.length_penalty!r} is only used with num_beams>1")
    if not config.return_dict_in_generate:
        for name in ("output_scores", "output_logits", "output_attentions", "output_hidden_states"):
            if getattr(config, name) is True:
                notes.append(f"`{name}` is ignored unless return_dict_in_generate=True")
    return notes
