"""One limit check for the engine and the server: the numbers it accepts, and the words of its refusals."""

import pytest

from tokenmill.engine.limits import RequestLimitError, RequestLimits, check_request


def test_engine_limits_are_the_smaller_of_context_and_pool():
    assert RequestLimits.of_engine(128, 64) == RequestLimits(64, 63)
    assert RequestLimits.of_engine(128, 4096) == RequestLimits(128, 127)


def test_narrowing_lowers_and_never_raises():
    engine = RequestLimits.of_engine(1024, 5120)
    assert engine.narrowed() == engine
    assert engine.narrowed(max_total_tokens=100) == RequestLimits(100, 99)
    assert engine.narrowed(max_total_tokens=5000, max_input_tokens=2000) == engine
    assert engine.narrowed(max_input_tokens=10, default_max_tokens=16) == RequestLimits(1024, 10, 16)


@pytest.mark.parametrize("prompt_len, requested, expected", [
    (10, None, 90), (10, 90, 90), (99, 1, 1), (1, None, 99),
])
def test_accepted_requests(prompt_len, requested, expected):
    assert check_request(prompt_len, requested, RequestLimits(100, 99)) == expected


def test_default_max_tokens_is_capped_by_the_room_left():
    limits = RequestLimits(100, 99, default_max_tokens=16)
    assert check_request(10, None, limits) == 16
    assert check_request(90, None, limits) == 10


@pytest.mark.parametrize("prompt_len, requested, param, message", [
    (0, 5, "prompt", "the prompt is empty"),
    (100, 1, "prompt", "the prompt has 100 tokens, more than the limit of 99 input tokens"),
    (10, 0, "max_tokens", "max_tokens must be at least 1, got 0"),
    (10, 91, "max_tokens", r"must be <= 100: the input has 10 tokens and 91 new tokens were asked for \(101 in"),
])
def test_refusals_name_the_field_and_the_numbers(prompt_len, requested, param, message):
    with pytest.raises(RequestLimitError, match=message) as refused:
        check_request(prompt_len, requested, RequestLimits(100, 99))
    assert refused.value.param == param and isinstance(refused.value, ValueError)


def test_narrowed_never_raises_the_prompt_limit_and_leaves_a_token_to_generate():
    assert RequestLimits(100, 50).narrowed() == RequestLimits(100, 50)  # nothing given: unchanged
    assert RequestLimits(100, 99).narrowed(max_total_tokens=40, max_input_tokens=60) == RequestLimits(40, 39)
    assert RequestLimits(100, 99).narrowed(max_input_tokens=30) == RequestLimits(100, 30)


def test_an_empty_prompt_is_named():
    with pytest.raises(RequestLimitError) as error:
        check_request(0, None, RequestLimits(100, 99))
    assert (str(error.value), error.value.param) == ("the prompt is empty (it encodes to zero tokens)", "prompt")
