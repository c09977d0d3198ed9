"""Bodies parsed as RFC 8259 JSON: what the standard leaves out (lone surrogates, NaN/Infinity, overflowing
numbers, absurd nesting) is a clear 4xx in the API's shape, and the kept-alive connection goes on serving."""

import json

import httpx2
import pytest

from tokenmill.server.strict_json import MAX_NESTING, parse_json


def test_valid_json_parses_as_json_does():
    body = '{"a": [1, 2.5, "\\ud83d\\ude00 ok", {"b": null}], "c": true, "é": "\\u00e9"}'.encode()
    assert parse_json(body) == json.loads(body)


@pytest.mark.parametrize("body, fragment", [
    (b'{"a": "x\\ud800y"}', "lone surrogate (\\ud800)"),
    (b'{"a": "\\udc00"}', "lone surrogate (\\udc00)"),
    (b'{"a\\ud83d": 1}', "lone surrogate (\\ud83d)"),
    (b'["\\ude00\\ud83d"]', "lone surrogate"),  # a low surrogate before a high one pairs nothing
    (b'{"t": NaN}', "NaN is not a JSON value"),
    (b'{"t": -Infinity}', "-Infinity is not a JSON value"),
    (b'{"t": 1e999}', "beyond the float range"),
    (b'{"t": ' + b"9" * 5000 + b"}", "digits"),
    (b"[" * (MAX_NESTING + 1) + b"]" * (MAX_NESTING + 1), f"nested more than {MAX_NESTING} levels"),
    (b"[" * 100000 + b"]" * 100000, f"nested more than {MAX_NESTING} levels"),
])
def test_what_json_leaves_out_is_refused(body, fragment):
    with pytest.raises(json.JSONDecodeError) as caught:
        parse_json(body)
    assert fragment in caught.value.msg


def test_nesting_up_to_the_bound_parses():
    depth = MAX_NESTING
    assert parse_json(b"[" * depth + b"]" * depth) is not None


def test_a_body_that_is_not_utf8_is_refused():
    with pytest.raises(json.JSONDecodeError, match="must be UTF-8 encoded JSON .byte 0xed at position 7"):
        parse_json('{"a": "\ud800"}'.encode("utf-8", "surrogatepass"))  # an encoded surrogate


SURROGATE = '"a\\ud800b"'
CASES = [
    ("/v1/chat/completions", '{"messages": [{"role": "user", "content": %s}], "max_tokens": 2}' % SURROGATE, 400),
    ("/v1/completions", '{"prompt": %s, "max_tokens": 2}' % SURROGATE, 400),
    ("/generate", '{"inputs": %s, "parameters": {"max_new_tokens": 2}}' % SURROGATE, 422),
    ("/generate_stream", '{"inputs": %s}' % SURROGATE, 422),
    ("/tokenize", '{"inputs": %s}' % SURROGATE, 422),
    ("/generate", '{"inputs": "hi", "parameters": {"temperature": Infinity}}', 422),
    ("/generate", '{"inputs": "hi", "parameters": {"temperature": 1e400}}', 422),
    ("/v1/completions", '{"prompt": "hi", "temperature": NaN}', 400),
]


@pytest.mark.parametrize("path, body, status", CASES)
def test_the_server_refuses_it_in_its_shape_and_keeps_the_connection(served, path, body, status):
    with httpx2.Client(base_url=served.url, timeout=60) as client:
        response = client.post(path, content=body.encode(), headers={"content-type": "application/json"})
        assert response.status_code == status, response.text
        error = response.json()
        message = error["error"]["message"] if path.startswith("/v1/") else error["error"]
        assert message.startswith("the request body is not valid JSON: ")
        assert path.startswith("/v1/") or error["error_type"] == "validation"
        assert client.post("/tokenize", json={"inputs": "still here"}).status_code == 200


@pytest.mark.parametrize("value", ["Infinity", "-inf", "nan"])
def test_numbers_spelled_as_strings_are_refused(served, value):
    response = httpx2.post(f"{served.url}/generate", json={"inputs": "hi", "parameters": {"temperature": value}},
                           timeout=60)
    assert response.status_code == 422 and "valid number" in response.json()["error"]
    response = httpx2.post(f"{served.url}/v1/completions", json={"prompt": "hi", "top_p": value}, timeout=60)
    assert response.status_code == 400 and "valid number" in response.json()["error"]["message"]
