"""GenerationConfig: transformers' generation parameters, by the same names, read from generation_config.json.

Unlike transformers 5 (whose fields default to None and get their effective values inside generate()), the
fields here hold the effective defaults directly (max_length=20, top_k=50, do_sample=False, ...), so code that
reads a config never has to resolve None. Saving writes only the fields that differ from these defaults, which is
what transformers would also do, so files round-trip between the two libraries.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import numbers
import os
from pathlib import Path
from typing import Any

from ..errors import CheckpointError

logger = logging.getLogger(__name__)

GENERATION_CONFIG_NAME = "generation_config.json"


class GenerationConfigNotFoundError(CheckpointError, FileNotFoundError):
    """generation_config.json is missing: a CheckpointError that is also an OSError, as transformers raises."""

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
_GENERATE_ARGUMENTS = (
    "logits_processor", "stopping_criteria", "prefix_allowed_tokens_fn", "synced_gpus", "assistant_model",
    "streamer", "negative_prompt_ids", "negative_prompt_attention_mask",
)

_WARNED_PAD_IDS: set = set()  # warn once per value, not at every validate()

_SAMPLING_FLAGS = ("temperature", "top_p", "min_p", "top_h", "typical_p", "top_k", "epsilon_cutoff", "eta_cutoff")


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def token_id_list(value) -> list[int] | None:
    """An int / list of ints / tensor of ids as a list of ints (None stays None)."""
    if value is None:
        return None
    if hasattr(value, "tolist") and not isinstance(value, (list, tuple)):
        value = value.tolist()
    if _is_int(value):
        return [int(value)]
    return [int(v) for v in value]


class GenerationConfig:
    """The parameters of one generate() call, with transformers' names, defaults and file format."""

    def __init__(self, **kwargs):
        self._fill(kwargs)
        self.validate()

    def _fill(self, kwargs: dict) -> None:
        for key, value in DEFAULTS.items():
            setattr(self, key, copy.deepcopy(value))
        kwargs = dict(kwargs)
        kwargs.pop("_commit_hash", None)
        self._from_model_config = kwargs.pop("_from_model_config", None)
        self.transformers_version = kwargs.pop("transformers_version", None)
        for key, value in kwargs.items():
            setattr(self, key, value)  # unknown keys are kept as attributes, as transformers does

    # ---- comparison and display ---------------------------------------------------------------------

    def __eq__(self, other) -> bool:
        if not isinstance(other, GenerationConfig):
            return NotImplemented
        return self._parameters() == other._parameters()

    def __hash__(self):
        return hash(json.dumps(self._parameters(), sort_keys=True, default=str))

    def __repr__(self) -> str:
        return f"{type(self).__name__} {json.dumps(self.to_diff_dict(), indent=2, sort_keys=True, default=str)}"

    def _parameters(self) -> dict[str, Any]:
        return {k: v for k, v in self.to_dict().items() if k not in METADATA_FIELDS}

    # ---- dict / json --------------------------------------------------------------------------------

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **kwargs) -> GenerationConfig:
        """A config from a dict (e.g. a parsed generation_config.json); kwargs override its values.

        With `return_unused_kwargs=True`, returns (config, kwargs that are not config fields), like transformers.
        """
        return_unused = kwargs.pop("return_unused_kwargs", False)
        kwargs.pop("_from_auto", None)
        kwargs.pop("_from_pipeline", None)
        # as transformers: every key (known or not) becomes an attribute, so nothing is ever unused
        config = cls(**{**config_dict, **kwargs})
        return (config, {}) if return_unused else config

    def to_dict(self) -> dict[str, Any]:
        """Every field (defaults included) as a plain dict; private runtime attributes (`_...`) are left out."""
        out = {}
        for key, value in self.__dict__.items():
            if key.startswith("_"):
                continue
            if hasattr(value, "to_dict") and not isinstance(value, dict):
                value = value.to_dict()
            out[key] = copy.deepcopy(value)
        return out

    def to_diff_dict(self) -> dict[str, Any]:
        """Only the fields whose value differs from the default (what save_pretrained writes)."""
        out = {}
        for key, value in self.to_dict().items():
            if key in METADATA_FIELDS:
                if value is not None:
                    out[key] = value
                continue
            if key not in DEFAULTS or value != DEFAULTS[key]:
                out[key] = value
        return out

    def to_json_string(self, use_diff: bool = True) -> str:
        data = self.to_diff_dict() if use_diff else self.to_dict()
        data = _json_ready(data)
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    def to_json_file(self, path: str | os.PathLike, use_diff: bool = True) -> None:
        Path(path).write_text(self.to_json_string(use_diff=use_diff), encoding="utf-8")

    # ---- files --------------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls, folder: str | os.PathLike, config_file_name: str | None = None, **kwargs
    ) -> GenerationConfig:
        """Read `<folder>/generation_config.json` (or `config_file_name`); kwargs override the file's values.

        A missing file raises GenerationConfigNotFoundError (both a CheckpointError and an OSError) naming the
        path; a file that is not a JSON object raises CheckpointError. Invalid values are only logged here (like
        transformers, so that a model still loads); validate() / generate() raise for them.
        """
        name = config_file_name or GENERATION_CONFIG_NAME
        if str(folder).lower().endswith(".gguf") or kwargs.get("gguf_file") or not Path(folder).exists():
            from ..auto import generation_config_from_pretrained  # a GGUF file or a Hub id: resolve first

            hub_keys = ("gguf_file", "revision", "cache_dir", "local_files_only")
            located = generation_config_from_pretrained(folder, **{k: kwargs.pop(k) for k in hub_keys if k in kwargs})
            located.update(**kwargs)
            return located
        folder = Path(folder)
        path = folder if folder.is_file() else folder / name
        if not path.is_file():
            raise GenerationConfigNotFoundError(path, f"no {name} here; the folder must contain the generation "
                                                      "config file")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise CheckpointError(path, f"not a valid JSON file ({error})") from error
        if not isinstance(data, dict):
            raise CheckpointError(path, f"expected a JSON object, found {type(data).__name__}")
        kwargs.pop("return_unused_kwargs", None)
        # a published file with a questionable value must not stop the model from loading: warn here, and let
        # generate() (which validates after applying the call's own arguments) raise if it is still invalid then
        config = cls.__new__(cls)
        config._fill({**data, **kwargs})
        try:
            config.validate()
        except ValueError as error:
            logger.warning("%s: %s; generate() will refuse it unless the call overrides it", path, error)
        return config

    def save_pretrained(self, folder: str | os.PathLike, config_file_name: str | None = None) -> Path:
        """Validate, then write the non-default fields to `<folder>/generation_config.json`; returns the path."""
        self.validate()
        folder = Path(folder)
        if folder.is_file():
            raise ValueError(f"{folder} should be a directory, not a file")
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / (config_file_name or GENERATION_CONFIG_NAME)
        self.to_json_file(path, use_diff=True)
        return path

    @classmethod
    def from_model_config(cls, model_config) -> GenerationConfig:
        """Generation fields (token ids, ...) taken from a model config object or dict."""
        source = model_config if isinstance(model_config, dict) else (
            model_config.to_dict() if hasattr(model_config, "to_dict") else vars(model_config))
        values = {k: v for k, v in source.items() if k in DEFAULTS and v is not None}
        config = cls(**values)
        config._from_model_config = True
        return config

    # ---- mutation -----------------------------------------------------------------------------------

    def update(self, defaults_only: bool = False, allow_custom_entries: bool = False, **kwargs) -> dict[str, Any]:
        """Set the kwargs that are fields of this config; return the ones that are not (left untouched).

        `defaults_only`: only fill fields that are currently None. `allow_custom_entries`: unknown keys become
        attributes too. The config is validated afterwards.
        """
        used = []
        for key, value in kwargs.items():
            if key in self.__dict__ and not key.startswith("_"):
                if not defaults_only or getattr(self, key) is None:
                    setattr(self, key, value)
                    used.append(key)
            elif allow_custom_entries:
                setattr(self, key, value)
                used.append(key)
        self.validate()
        return {key: value for key, value in kwargs.items() if key not in used}

    def copy(self) -> GenerationConfig:
        return copy.deepcopy(self)

    # ---- validation ---------------------------------------------------------------------------------

    def validate(self, strict: bool = False) -> None:
        """Raise ValueError naming the parameter for any value generate() could not honour.

        transformers raises for some of these only when the processor is built, and merely warns for others; we
        raise as early as possible. Flags that are set but ignored by the chosen strategy (e.g. temperature with
        greedy decoding) are logged, or raised when `strict=True`.
        """
        problems = _validate(self)
        if problems:
            raise ValueError("invalid generation config: " + "; ".join(problems))
        ignored = _ignored_flags(self)
        if ignored:
            message = "generation flags set but unused by this strategy: " + "; ".join(ignored)
            if strict:
                raise ValueError(message)
            logger.info(message)

    # ---- helpers for generate() ---------------------------------------------------------------------

    @property
    def eos_token_ids(self) -> list[int]:
        """eos_token_id as a list (empty when unset)."""
        return token_id_list(self.eos_token_id) or []


def _json_ready(value):
    if isinstance(value, dict):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if hasattr(value, "tolist"):
        return value.tolist()
    return value


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
    if not _is_int(value) or value < minimum:
        problems.append(f"`{name}` must be an integer >= {minimum}, got {value!r}")


def _check_ids(problems, name, value, allow_list=True):
    if value is None:
        return
    values = value if (allow_list and isinstance(value, (list, tuple))) else [value]
    if hasattr(value, "tolist") and not isinstance(value, (list, tuple)):
        values = value.flatten().tolist() if hasattr(value, "flatten") else value.tolist()
    if isinstance(value, (list, tuple)) and len(value) == 0:
        problems.append(f"`{name}` must not be an empty list")
    if not all(_is_int(v) and v >= 0 for v in values):
        problems.append(f"`{name}` must be a non-negative token id{' or a list of them' if allow_list else ''}, "
                        f"got {value!r}")


def _validate(config: GenerationConfig) -> list[str]:
    p: list[str] = []
    # lengths
    if config.max_new_tokens is not None and (not _is_int(config.max_new_tokens) or config.max_new_tokens <= 0):
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
    if _is_int(config.num_return_sequences) and config.num_return_sequences > 1:
        if (config.num_beams or 1) == 1:
            if not config.do_sample:
                p.append("Greedy methods (do_sample != True) without beam search do not support "
                         f"`num_return_sequences` different than 1 (got {config.num_return_sequences})")
        elif _is_int(config.num_beams) and config.num_return_sequences > config.num_beams:
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
    if config.top_k is not None and (not _is_int(config.top_k) or config.top_k < 0):
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
            isinstance(seq, list) and seq and all(_is_int(t) and t >= 0 for t in seq) for seq in config.bad_words_ids)
        if not ok:
            p.append(f"`bad_words_ids` must be a non-empty list of non-empty lists of token ids, "
                     f"got {config.bad_words_ids!r}")
    if config.sequence_bias is not None:
        p.extend(_sequence_bias_problems(config.sequence_bias))
    for name in ("suppress_tokens", "begin_suppress_tokens"):
        value = getattr(config, name)
        if value is not None and (not isinstance(value, (list, tuple)) or
                                  not all(_is_int(t) and t >= 0 for t in value)):
            p.append(f"`{name}` must be a list of token ids, got {value!r}")
    # special tokens
    _check_ids(p, "eos_token_id", config.eos_token_id)
    _check_ids(p, "bos_token_id", config.bos_token_id)
    _check_ids(p, "forced_eos_token_id", config.forced_eos_token_id)
    _check_ids(p, "forced_bos_token_id", config.forced_bos_token_id, allow_list=False)
    if config.pad_token_id is not None:
        if not _is_int(config.pad_token_id):
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
            forced_set = {forced} if _is_int(forced) else set(forced) if isinstance(forced, (list, tuple)) else set()
            if forced_set and forced_set <= suppressed:
                p.append(f"every token in `{name}` ({sorted(forced_set)}) is also in `suppress_tokens`: "
                         "forcing a suppressed token leaves no valid token")
    for arg in _GENERATE_ARGUMENTS:
        if arg in config.__dict__:
            p.append(f"`{arg}` is not a generation config field; pass it to generate() directly")
    return p


def _sequence_bias_problems(bias) -> list[str]:
    def ids_ok(ids):
        return len(ids) > 0 and all(_is_int(t) and t >= 0 for t in ids)

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


def _ignored_flags(config: GenerationConfig) -> list[str]:
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
