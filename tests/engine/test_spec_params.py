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
