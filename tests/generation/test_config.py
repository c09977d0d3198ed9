"""GenerationConfig: transformers' field names and effective defaults, generation_config.json round trips in both
directions, update/copy semantics, and validation errors."""

from __future__ import annotations

import json

import pytest
import transformers

from tokenmill.errors import CheckpointError
from tokenmill.generation.config import DEFAULTS, GenerationConfig

SAVED = [
    {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0},
    {"do_sample": True, "temperature": 0.6, "top_p": 0.9, "top_k": 20, "min_p": 0.05, "eos_token_id": [2, 7],
     "repetition_penalty": 1.1, "max_new_tokens": 256},
    {"max_length": 4096, "no_repeat_ngram_size": 3, "bad_words_ids": [[5], [6, 7]], "suppress_tokens": [1, 2],
     "begin_suppress_tokens": [3], "forced_eos_token_id": 9, "stop_strings": ["###", "\n\n"],
     "sequence_bias": [[[4], 1.5]], "renormalize_logits": True, "cache_implementation": "static"},
    {"num_beams": 4, "num_return_sequences": 2, "length_penalty": 0.8, "early_stopping": True,
     "return_dict_in_generate": True, "output_scores": True, "output_logits": True, "max_time": 3.5},
]


def effective(hf_config, name):
    """The value transformers' generate() would use for `name`."""
    value = getattr(hf_config, name, None)
    if value is None:
        value = hf_config._get_default_generation_params().get(name)
    return value


def test_defaults_match_transformers_effective_defaults():
    ours, theirs = GenerationConfig(), transformers.GenerationConfig()
    for name, value in theirs._get_default_generation_params().items():
        assert getattr(ours, name) == value, name
    for name in vars(theirs):
        if not name.startswith("_"):
            assert hasattr(ours, name), name
    assert ours.max_length == 20 and ours.top_k == 50 and ours.do_sample is False and ours.max_new_tokens is None


@pytest.mark.parametrize("fields", SAVED)
def test_reads_what_transformers_saved(tmp_path, fields):
    transformers.GenerationConfig(**fields).save_pretrained(tmp_path)
    ours = GenerationConfig.from_pretrained(tmp_path)
    theirs = transformers.GenerationConfig.from_pretrained(tmp_path)
    for name in DEFAULTS:
        expected = effective(theirs, name)
        got = getattr(ours, name)
        if isinstance(expected, tuple):
            expected = list(expected)
        assert got == expected or (expected is None and got is False), name  # None means off in transformers
    for name, value in fields.items():
        assert getattr(ours, name) == value
    assert ours.transformers_version == theirs.transformers_version


@pytest.mark.parametrize("fields", SAVED)
def test_transformers_reads_what_we_saved(tmp_path, fields):
    path = GenerationConfig(**fields).save_pretrained(tmp_path)
    data = json.loads(path.read_text())
    assert set(data) == set(fields)  # only non-default fields are written
    theirs = transformers.GenerationConfig.from_pretrained(tmp_path)
    for name in DEFAULTS:
        if hasattr(theirs, name):
            ours, expected = getattr(GenerationConfig(**fields), name), effective(theirs, name)
            assert ours == expected or (expected is None and ours is False), name
    assert GenerationConfig.from_pretrained(tmp_path) == GenerationConfig(**fields)


def test_dict_round_trip_and_custom_fields():
    config = GenerationConfig(temperature=0.5, do_sample=True, my_custom_flag=3)
    assert config.my_custom_flag == 3
    again = GenerationConfig.from_dict(config.to_dict())
    assert again == config and again.my_custom_flag == 3
    assert GenerationConfig.from_dict({"top_k": 5}, top_k=7, extra=1).top_k == 7
    assert "temperature" in config.to_dict() and config.to_dict()["top_k"] == 50
    assert config.to_diff_dict() == {"temperature": 0.5, "do_sample": True, "my_custom_flag": 3}


def test_missing_or_broken_file(tmp_path):
    with pytest.raises(CheckpointError, match="generation_config.json"):
        GenerationConfig.from_pretrained(tmp_path)
    with pytest.raises(OSError):  # what transformers raises, for callers written against it
        GenerationConfig.from_pretrained(tmp_path / "nowhere")
    (tmp_path / "generation_config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="JSON"):
        GenerationConfig.from_pretrained(tmp_path)
    (tmp_path / "generation_config.json").write_text("[1, 2]")
    with pytest.raises(CheckpointError, match="JSON object"):
        GenerationConfig.from_pretrained(tmp_path)
    # an invalid value does not stop loading (the model must still load); using it does
    (tmp_path / "generation_config.json").write_text(json.dumps({"temperature": -1.0}))
    loaded = GenerationConfig.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="temperature"):
        loaded.validate()
    assert loaded.copy().update(temperature=0.7) == {}  # an override repairs it


def test_update_copy():
    base = GenerationConfig(eos_token_id=2)
    copy = base.copy()
    unused = copy.update(max_new_tokens=5, temperature=0.3, foo="bar", do_sample=True)
    assert unused == {"foo": "bar"}
    assert (copy.max_new_tokens, copy.temperature, copy.do_sample) == (5, 0.3, True)
    assert base.max_new_tokens is None and base.temperature == 1.0  # the original is untouched
    assert copy.update(defaults_only=True, max_new_tokens=9, min_new_tokens=2) == {"max_new_tokens": 9}
    assert (copy.max_new_tokens, copy.min_new_tokens) == (5, 2)
    # transformers agrees on what is unused
    theirs = transformers.GenerationConfig(eos_token_id=2)
    assert theirs.update(max_new_tokens=5, temperature=0.3, foo="bar", do_sample=True) == {"foo": "bar"}
    with pytest.raises(ValueError, match="top_p"):
        copy.update(top_p=1.5)
    assert base.eos_token_ids == [2] and GenerationConfig(eos_token_id=[2, 3]).eos_token_ids == [2, 3]


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"max_new_tokens": -3}, "max_new_tokens"),
        ({"temperature": -0.5}, "temperature"),
        ({"temperature": 0.0, "do_sample": True}, "do_sample=False"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.2}, "top_p"),
        ({"top_k": -1}, "top_k"),
        ({"top_k": 2.5}, "top_k"),
        ({"min_p": 1.5}, "min_p"),
        ({"typical_p": 0.0}, "typical_p"),
        ({"epsilon_cutoff": 1.0}, "epsilon_cutoff"),
        ({"eta_cutoff": -0.1}, "eta_cutoff"),
        ({"repetition_penalty": 0.0}, "repetition_penalty"),
        ({"no_repeat_ngram_size": -1}, "no_repeat_ngram_size"),
        ({"num_return_sequences": 2}, "num_return_sequences"),
        ({"num_beams": 2, "num_return_sequences": 3}, "num_return_sequences"),
        ({"num_beams": 0}, "num_beams"),
        ({"early_stopping": "sometimes"}, "early_stopping"),
        ({"eos_token_id": -1}, "eos_token_id"),
        ({"eos_token_id": [2, "x"]}, "eos_token_id"),
        ({"bad_words_ids": [1, 2]}, "bad_words_ids"),
        ({"sequence_bias": [[4, 1.0]]}, "sequence_bias"),
        ({"suppress_tokens": [5], "forced_eos_token_id": 5}, "suppress_tokens"),
        ({"stop_strings": ""}, "stop_strings"),
        ({"stop_strings": ["ok", 3]}, "stop_strings"),
        ({"max_time": 0}, "max_time"),
        ({"streamer": object()}, "streamer"),
    ],
)
def test_validate_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GenerationConfig(**kwargs)
    config = GenerationConfig()
    for key, value in kwargs.items():
        setattr(config, key, value)
    with pytest.raises(ValueError, match=match):
        config.validate()


def test_transformers_raises_for_the_same_hard_errors():
    """The errors transformers itself raises at config time are raised here too."""
    for kwargs in ({"max_new_tokens": 0}, {"num_return_sequences": 2},
                   {"num_beams": 2, "num_return_sequences": 3}, {"early_stopping": "sometimes"},
                   {"suppress_tokens": [5], "forced_eos_token_id": 5}):
        with pytest.raises(ValueError):
            transformers.GenerationConfig(**kwargs)
        with pytest.raises(ValueError):
            GenerationConfig(**kwargs)


def test_valid_configs_and_strict():
    GenerationConfig(do_sample=True, temperature=0.0001, top_p=1.0, top_k=0, min_p=0.0, num_return_sequences=3)
    GenerationConfig(temperature=0.0)  # greedy: temperature is ignored, not an error
    GenerationConfig(num_beams=4, num_return_sequences=4, early_stopping="never")
    with pytest.raises(ValueError, match="do_sample"):
        GenerationConfig(temperature=0.5).validate(strict=True)
