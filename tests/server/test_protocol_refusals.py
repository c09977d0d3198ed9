"""Requests the protocols once accepted and then served wrongly (or failed on with a 500): each is now a 4xx in
its API's shape naming the field, and the well-formed neighbour of each still works."""

import httpx2
import pytest

CHAT = "/v1/chat/completions"
HI = [{"role": "user", "content": "hi"}]
TOOL = {"type": "function", "function": {"name": "weather", "parameters": {"type": "object", "properties": {}}}}


def _post(served, path, body):
    return httpx2.post(f"{served.url}{path}", json=body, timeout=60)


@pytest.mark.parametrize("extra, fragment", [
    ({"response_format": {"type": "json_schema", "json_schema": "person"}}, "response_format.json_schema"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "p", "schema": "{}"}}},
     "json_schema.schema must be a JSON schema object"),
    ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages.0.role"),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]}, "messages.0.content"),
    ({"messages": [{"role": "user", "content": [{"type": "text"}]}]}, "only text parts"),
    ({"messages": [{"role": "user", "content": None}]}, "messages[0].content: a 'user' message needs content"),
    ({"messages": [{"role": "user"}]}, "messages[0].content: a 'user' message needs content"),
    ({"messages": [{"role": "user", "content": []}]}, "messages[0].content: an empty list of content parts"),
    ({"messages": [{"role": "system", "content": None}, *HI]}, "a 'system' message needs content"),
    ({"messages": [*HI, {"role": "assistant", "content": None}, *HI]}, "messages[1].content: a 'assistant'"),
    ({"messages": [*HI, {"role": "assistant", "content": None, "tool_calls": []}, *HI]}, "messages[1].content"),
    ({"messages": [*HI, {"role": "tool", "tool_call_id": "a", "content": None}]}, "a 'tool' message needs content"),
    ({"tools": [{"x": 1}], "tool_choice": "none"}, "tools.0"),
    ({"tools": [{"type": "function", "function": {"description": "no name"}}], "tool_choice": "none"},
     "tools.0.function.name"),
    ({"tools": [{"type": "function", "function": {"name": "has space"}}], "tool_choice": "none"},
     "tools.0.function.name"),
    ({"tools": "weather", "tool_choice": "none"}, "tools"),
    ({"tool_choice": "sometimes"}, "tool_choice"),
    ({"seed": 2**64}, "seed"),
    ({"seed": -2**63 - 1}, "seed"),
])
def test_openai_chat_refusals(served, extra, fragment):
    response = _post(served, CHAT, {"messages": HI, "max_tokens": 2, **extra})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert fragment in error["message"] and error["type"] == "invalid_request_error"


def test_the_well_formed_neighbours_are_served(served):
    for extra in ({"tools": [TOOL], "tool_choice": "none"}, {"seed": 2**64 - 1}, {"seed": -2**63},
                  {"messages": [{"role": "developer", "content": "Be brief."}, *HI]},
                  {"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]},
                  {"messages": [*HI, {"role": "assistant", "content": None, "tool_calls": [
                      {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": "{}"}}]},
                                {"role": "tool", "tool_call_id": "c1", "content": "sunny"}], "tools": [TOOL]}):
        response = _post(served, CHAT, {"messages": HI, "max_tokens": 2, **extra})
        assert response.status_code == 200, (extra, response.text)


@pytest.mark.parametrize("parameters, fragment", [
    ({"seed": 2**64}, "seed"),
    ({"seed": -1}, "seed"),
    ({"watermark": True}, "`watermark` is not supported"),
    ({"temperature": -0.5}, "`temperature` must be strictly positive"),
    ({"temperature": "Infinity"}, "valid number"),
])
def test_tgi_refusals(served, parameters, fragment):
    response = _post(served, "/generate", {"inputs": "hi", "parameters": {"max_new_tokens": 2, **parameters}})
    assert response.status_code == 422, response.text
    assert fragment in response.json()["error"] and response.json()["error_type"] == "validation"
    assert "`grammar`" not in response.json()["error"]


@pytest.mark.parametrize("path, body", [
    (CHAT, {"messages": HI, "max_tokens": 2, "seed": 2**64, "stream": True}),
    ("/v1/completions", {"prompt": "hi", "max_tokens": 2, "seed": 2**64, "stream": True}),
    ("/generate_stream", {"inputs": "hi", "parameters": {"max_new_tokens": 2, "seed": 2**64}}),
])
def test_a_streamed_request_out_of_range_is_refused_before_the_stream(served, path, body):
    response = _post(served, path, body)
    assert response.status_code in (400, 422) and "seed" in response.text
    assert response.headers["content-type"] == "application/json"


@pytest.mark.parametrize("path, body, fragment", [
    (CHAT, {"messages": HI, "max_tokens": 2, "prediction": {"type": "content"}}, "prediction: unrecognized"),
    (CHAT, {"messages": HI, "max_tokens": 2, "reasoning_effort": "extreme"}, "reasoning_effort"),
    (CHAT, {"messages": HI, "max_tokens": 2, "functions": [{"name": "f"}]}, "functions: unrecognized"),
    ("/v1/completions", {"prompt": "hi", "max_tokens": 2, "best_of": 3}, "best_of must equal n"),
    ("/v1/completions", {"prompt": "hi", "max_tokens": 2, "use_beam_search": True}, "use_beam_search: unrecognized"),
])
def test_an_argument_that_would_be_ignored_is_refused_by_name(served, path, body, fragment):
    response = _post(served, path, body)
    assert response.status_code == 400, response.text
    assert fragment in response.json()["error"]["message"]


def test_tgi_refuses_an_unknown_parameter_by_name(served):
    response = _post(served, "/generate", {"inputs": "hi", "parameters": {"max_new_tokens": 2, "min_p": 0.1}})
    assert response.status_code == 422 and "parameters.min_p: unrecognized" in response.json()["error"]


def test_the_harmless_openai_arguments_are_served(served):
    for path, body in ((CHAT, {"messages": HI, "max_tokens": 2, "user": "u-1"}),
                       ("/v1/completions", {"prompt": "hi", "max_tokens": 2, "n": 2, "best_of": 2, "seed": 1})):
        response = _post(served, path, body)
        assert response.status_code == 200, (body, response.text)
