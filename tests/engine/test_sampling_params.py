"""SamplingParams: the documented defaults, every bound accepted at its edge and refused past it, by its message."""

import pytest

from tokenmill.engine.sampling_params import SamplingParams, check_structured_output


def test_defaults_are_the_openai_ones():
    params = SamplingParams()
    assert (params.n, params.max_tokens, params.min_tokens, params.temperature, params.top_p, params.top_k,
            params.min_p, params.typical_p) == (1, 16, 0, 1.0, 1.0, 0, 0.0, 1.0)
    assert (params.presence_penalty, params.frequency_penalty, params.repetition_penalty) == (0.0, 0.0, 1.0)
    assert (params.logit_bias, params.seed, params.stop, params.stop_token_ids) == (None, None, [], [])
    assert (params.ignore_eos, params.logprobs, params.prompt_logprobs) == (False, None, None)
    assert (params.skip_special_tokens, params.include_stop_str_in_output, params.do_sample) == (True, False, None)
    assert params.structured_output is None


@pytest.mark.parametrize("kwargs", [
    {"n": 1}, {"max_tokens": 1}, {"max_tokens": None}, {"min_tokens": 0}, {"temperature": 0}, {"top_p": 1},
    {"top_p": 1e-9}, {"top_k": 1}, {"min_p": 0}, {"min_p": 1}, {"typical_p": 1}, {"typical_p": 1e-9},
    {"presence_penalty": -2}, {"presence_penalty": 2}, {"frequency_penalty": -2}, {"frequency_penalty": 2},
    {"repetition_penalty": 1e-9}, {"logprobs": 0}, {"logprobs": 20}, {"prompt_logprobs": 0},
    {"prompt_logprobs": 20}, {"seed": -2**63}, {"seed": 2**64 - 1},
])
def test_each_bound_is_accepted_at_its_edge(kwargs):
    params = SamplingParams(**kwargs)
    assert all(getattr(params, name) == value for name, value in kwargs.items())


@pytest.mark.parametrize("kwargs, message", [
    ({"n": 0}, "n must be an integer >= 1, got 0"),
    ({"n": 1.0}, "n must be an integer >= 1, got 1.0"),
    ({"max_tokens": 0}, "max_tokens must be an integer, at least 1, got 0"),
    ({"max_tokens": 2.0}, "max_tokens must be an integer, at least 1, got 2.0"),
    ({"min_tokens": -1}, "min_tokens must be >= 0, got -1"),
    ({"min_tokens": 1.0}, "min_tokens must be >= 0, got 1.0"),
    ({"temperature": -0.5}, "temperature must be >= 0, got -0.5"),
    ({"top_p": 0}, "top_p must be in (0, 1], got 0"),
    ({"top_p": 1.5}, "top_p must be in (0, 1], got 1.5"),
    ({"top_k": -2}, "top_k must be -1, 0 or positive, got -2"),
    ({"top_k": 2.0}, "top_k must be -1, 0 or positive, got 2.0"),
    ({"min_p": -0.5}, "min_p must be in [0, 1], got -0.5"),
    ({"min_p": 1.5}, "min_p must be in [0, 1], got 1.5"),
    ({"typical_p": 0}, "typical_p must be in (0, 1], got 0"),
    ({"typical_p": 1.5}, "typical_p must be in (0, 1], got 1.5"),
    ({"presence_penalty": -2.5}, "presence_penalty must be in [-2, 2], got -2.5"),
    ({"presence_penalty": 2.5}, "presence_penalty must be in [-2, 2], got 2.5"),
    ({"frequency_penalty": -2.5}, "frequency_penalty must be in [-2, 2], got -2.5"),
    ({"frequency_penalty": 2.5}, "frequency_penalty must be in [-2, 2], got 2.5"),
    ({"repetition_penalty": 0}, "repetition_penalty must be >= 1.175e-38 (> 0 and a normal float32: logits are "
                                "divided by it), got 0"),
    ({"repetition_penalty": 1e-39}, "repetition_penalty must be >= 1.175e-38 (> 0 and a normal float32: logits "
                                    "are divided by it), got 1e-39"),
    ({"logprobs": -1}, "logprobs must be in [0, 20], got -1"),
    ({"logprobs": 21}, "logprobs must be in [0, 20], got 21"),
    ({"prompt_logprobs": -1}, "prompt_logprobs must be in [0, 20], got -1"),
    ({"prompt_logprobs": 21}, "prompt_logprobs must be in [0, 20], got 21"),
    ({"seed": 2**64}, f"seed must be an integer in [-2**63, 2**64), got {2**64}"),
    ({"seed": -2**63 - 1}, f"seed must be an integer in [-2**63, 2**64), got {-2**63 - 1}"),
    ({"seed": 1.0}, "seed must be an integer in [-2**63, 2**64), got 1.0"),
])
def test_each_bound_is_refused_past_its_edge_by_name(kwargs, message):
    with pytest.raises(ValueError) as error:
        SamplingParams(**kwargs)
    assert str(error.value) == message


def test_stop_lists_are_normalised():
    assert SamplingParams(stop="###").stop == ["###"]
    assert SamplingParams(stop=["", "a", ""]).stop == ["a"]  # an empty stop string would end every sequence
    assert SamplingParams(stop=None, stop_token_ids=None).stop == []
    assert SamplingParams(stop_token_ids=(3, 4)).stop_token_ids == [3, 4]
    assert SamplingParams(stop_token_ids=None).stop_token_ids == []
    assert SamplingParams(top_k=-1).top_k == 0 and SamplingParams(top_k=None).top_k == 0


@pytest.mark.parametrize("do_sample, temperature, sampled", [
    (None, 0.5, True), (None, 0, False), (True, 0.5, True), (True, 0, False), (False, 0.5, False)])
def test_sampled_needs_a_positive_temperature_and_no_do_sample_false(do_sample, temperature, sampled):
    assert SamplingParams(do_sample=do_sample, temperature=temperature).sampled is sampled


@pytest.mark.parametrize("kwargs, needs", [
    ({}, False), ({"presence_penalty": -0.5}, True), ({"frequency_penalty": 0.5}, True),
    ({"repetition_penalty": 1.1}, True), ({"repetition_penalty": 0.9}, True), ({"min_tokens": 1}, True)])
def test_needs_history_when_a_penalty_or_min_tokens_reads_the_outputs(kwargs, needs):
    assert SamplingParams(**kwargs).needs_history is needs


@pytest.mark.parametrize("spec", [("regex", "[0-9]+"), ["choice", ["yes", "no"]], ("grammar", 'start: "a"'),
                                  ("json_schema", {"type": "integer"})])
def test_valid_structured_output_is_accepted(spec):
    assert SamplingParams(structured_output=spec).structured_output == spec
    check_structured_output(spec)


@pytest.mark.parametrize("spec, message", [
    ("regex", "structured_output must be a (kind, value) pair, got 'regex'"),
    (("regex",), "structured_output must be a (kind, value) pair, got ('regex',)"),
    (("regex", "a", "b"), "structured_output must be a (kind, value) pair, got ('regex', 'a', 'b')"),
    (("xml", "a"), "unknown structured-output kind 'xml'; use one of ['choice', 'grammar', 'json_schema', 'regex']"),
    (("regex", ""), "a structured-output regex must be a non-empty string, got ''"),
    (("grammar", 5), "a structured-output grammar must be a non-empty string, got 5"),
    (("json_schema", 5), "invalid json_schema for structured output: a JSON schema must be a dict or a JSON string, "
                         "got int"),
    (("choice", []), "invalid choice for structured output: a choice list needs at least one non-empty string, "
                     "got []"),
])
def test_bad_structured_output_is_refused_by_name(spec, message):
    with pytest.raises(ValueError) as error:
        SamplingParams(structured_output=spec)
    assert str(error.value) == message


@pytest.mark.parametrize("spec, start", [
    (("regex", "("), "invalid regex for structured output: "),
    (("json_schema", {"type": "nope"}), "invalid json_schema for structured output: "),
])
def test_a_grammar_the_matcher_rejects_is_refused_with_its_reason(spec, start):
    with pytest.raises(ValueError) as error:
        check_structured_output(spec)
    assert str(error.value).startswith(start) and len(str(error.value)) > len(start)
    assert not str(error.value).endswith(("\n", " "))  # the matcher's reason, stripped


def test_a_matcher_warning_is_not_a_refusal(monkeypatch):
    import llguidance

    real = llguidance.LLMatcher
    warned = type("WarningMatcher", (), {"grammar_from_regex": staticmethod(real.grammar_from_regex),
                                         "validate_grammar": staticmethod(lambda grammar: "WARNING: slow regex\n")})
    monkeypatch.setattr(llguidance, "LLMatcher", warned)
    check_structured_output(("regex", "[0-9]+"))  # accepted: only a problem that is not a warning refuses
