"""A request's speculative settings: what SamplingParams accepts and the error naming each bad field."""

import pytest

from tokenmill.engine import SamplingParams
from tokenmill.engine.spec_params import SpeculativeConfig, speculative_config


def test_forms_that_are_accepted():
    assert speculative_config(None) is None
    assert speculative_config(3) == SpeculativeConfig(3)
    full = {"method": "ngram", "num_speculative_tokens": 5, "prompt_lookup_max": 6, "prompt_lookup_min": 2}
    assert SamplingParams(speculative=full).speculative == SpeculativeConfig(5, 6, 2)
    assert not SamplingParams(speculative={"num_speculative_tokens": 0}).speculative.enabled


@pytest.mark.parametrize("value, named", [
    ({"num_speculative_tokens": -1}, "speculative.num_speculative_tokens"),
    ({"num_speculative_tokens": 17}, "speculative.num_speculative_tokens"),
    ({"num_speculative_tokens": 2.5}, "speculative.num_speculative_tokens"),
    ({"num_speculative_tokens": True}, "speculative.num_speculative_tokens"),
    ({"method": "eagle", "num_speculative_tokens": 2}, "speculative.method"),
    ({"num_speculative_tokens": 2, "prompt_lookup_max": 0}, "speculative.prompt_lookup_max"),
    ({"num_speculative_tokens": 2, "prompt_lookup_min": 0}, "speculative.prompt_lookup_min"),
    ({"num_speculative_tokens": 2, "prompt_lookup_min": 5, "prompt_lookup_max": 3}, "speculative.prompt_lookup_min"),
    ({"num_speculative_tokens": 2, "draft_model": "x"}, "draft_model"),
    ({"method": "ngram"}, "speculative.num_speculative_tokens"),
    ("ngram", "speculative"),
])
def test_bad_values_are_refused_naming_the_field(value, named):
    with pytest.raises(ValueError, match=named.replace(".", r"\.")):
        SamplingParams(speculative=value)


@pytest.mark.parametrize("fields", [
    {"num_speculative_tokens": 16},  # the largest draft
    {"num_speculative_tokens": 2, "prompt_lookup_max": 32},  # the longest n-gram
    {"num_speculative_tokens": 2, "prompt_lookup_max": 1, "prompt_lookup_min": 1},  # the shortest, min == max
])
def test_the_bounds_themselves_are_accepted(fields):
    config = speculative_config(fields)
    assert [getattr(config, name) for name in fields] == list(fields.values())


@pytest.mark.parametrize("value, named", [
    ({"num_speculative_tokens": 2, "prompt_lookup_max": 33}, "speculative.prompt_lookup_max"),
    ({"num_speculative_tokens": 2, "prompt_lookup_max": "4"}, "speculative.prompt_lookup_max"),
])
def test_lookup_max_outside_its_range_is_refused(value, named):
    with pytest.raises(ValueError, match=named.replace(".", r"\.")):
        speculative_config(value)


@pytest.mark.parametrize("value, message", [
    ("ngram", "speculative must be an object with method, num_speculative_tokens, prompt_lookup_max, "
              "prompt_lookup_min, got 'ngram'"),
    ({"num_speculative_tokens": 2, "draft_model": "x", "b": 1},
     "speculative: unknown field(s) b, draft_model; known: method, num_speculative_tokens, prompt_lookup_max, "
     "prompt_lookup_min"),
    ({"method": "ngram"}, "speculative.num_speculative_tokens is required"),
])
def test_refusals_read_in_full(value, message):
    with pytest.raises(ValueError) as refused:
        speculative_config(value)
    assert str(refused.value) == message
