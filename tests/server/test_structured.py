"""Structured output through the real server and the real clients (openai SDK, huggingface_hub), SmolLM2:
JSON schema (chat, streaming and not, sampled over several seeds, n > 1), regex and JSON grammars over TGI,
a choice list, and bad specs rejected in each API's error shape."""

import json
import re

import httpx2
import openai
import pytest

from tests.server.conftest import MODEL_NAME

PERSON = {"type": "object",
          "properties": {"name": {"type": "string", "minLength": 1, "maxLength": 12},
                         "age": {"type": "integer", "minimum": 0, "maximum": 120}},
          "required": ["name", "age"], "additionalProperties": False}
PERSON_FORMAT = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}
MESSAGES = [{"role": "user", "content": "Invent a person. Reply in JSON with their name and age."}]
CODE = r"[A-Z]{3}-[0-9]{2,4}"


def _check_person(text: str) -> None:
    person = json.loads(text)
    assert set(person) == {"name", "age"}, text
    assert isinstance(person["name"], str) and 1 <= len(person["name"]) <= 12, text
    assert isinstance(person["age"], int) and not isinstance(person["age"], bool) and 0 <= person["age"] <= 120


@pytest.mark.parametrize("seed", [1, 2])
def test_chat_json_schema_sampled(openai_client, seed):
    response = openai_client.chat.completions.create(
        model=MODEL_NAME, messages=MESSAGES, response_format=PERSON_FORMAT, max_tokens=40, temperature=1.0,
        seed=seed, n=2)
    assert len(response.choices) == 2
    for choice in response.choices:
        assert choice.finish_reason == "stop", choice.message.content
        _check_person(choice.message.content)


def test_chat_json_schema_streamed(openai_client):
    stream = openai_client.chat.completions.create(
        model=MODEL_NAME, messages=MESSAGES, response_format=PERSON_FORMAT, max_tokens=40, temperature=0.8,
        seed=7, stream=True)
    pieces, finish = [], None
    for chunk in stream:
        for choice in chunk.choices:
            pieces.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
    assert finish == "stop"
    _check_person("".join(pieces))


def test_completions_guided_json_and_json_object(openai_client):
    """/v1/completions: vLLM's extra-body guided_json; and json_object (any JSON object) on a short budget."""
    response = openai_client.completions.create(
        model=MODEL_NAME, prompt="A person as JSON:", max_tokens=40, temperature=0.7, seed=3,
        extra_body={"guided_json": PERSON})
    _check_person(response.choices[0].text)
    stream = openai_client.completions.create(
        model=MODEL_NAME, prompt='The JSON object {"ok": true} is', max_tokens=24, temperature=0, stream=True,
        extra_body={"response_format": {"type": "json_object"}})
    pieces, finish = [], None
    for chunk in stream:
        for choice in chunk.choices:
            pieces.append(choice.text)
            finish = choice.finish_reason or finish
    assert finish == "stop", "".join(pieces)
    assert isinstance(json.loads("".join(pieces)), dict)


def test_chat_guided_choice(openai_client):
    options = ["positive", "negative", "neutral"]
    for seed in (0, 1, 2):
        response = openai_client.chat.completions.create(
            model=MODEL_NAME, messages=[{"role": "user", "content": "Sentiment of 'I love this film'?"}],
            max_tokens=8, temperature=1.0, seed=seed, extra_body={"guided_choice": options})
        assert response.choices[0].message.content in options
        assert response.choices[0].finish_reason == "stop"


def test_tgi_regex_grammar(tgi_client):
    for seed in (0, 1, 2):
        text = tgi_client.text_generation("A product code:", max_new_tokens=12, do_sample=True, temperature=1.0,
                                          seed=seed, grammar={"type": "regex", "value": CODE})
        assert re.fullmatch(CODE, text), text
    streamed = "".join(tgi_client.text_generation("A product code:", max_new_tokens=12, stream=True,
                                                  grammar={"type": "regex", "value": CODE}))
    assert re.fullmatch(CODE, streamed), streamed


def test_tgi_json_grammar(tgi_client):
    output = tgi_client.text_generation("A person as JSON:", max_new_tokens=40, details=True, do_sample=True,
                                        seed=5, grammar={"type": "json", "value": PERSON})
    assert output.details.finish_reason == "eos_token"
    _check_person(output.generated_text)


def test_invalid_specs_are_client_errors(openai_client, served):
    with pytest.raises(openai.BadRequestError) as caught:
        openai_client.chat.completions.create(
            model=MODEL_NAME, messages=MESSAGES, max_tokens=4,
            response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nope"}}})
    error = caught.value.body
    assert caught.value.status_code == 400 and error["param"] == "response_format"
    assert "invalid json_schema for structured output" in error["message"] and "nope" in error["message"]
    with pytest.raises(openai.BadRequestError, match="invalid regex") as caught:
        openai_client.completions.create(model=MODEL_NAME, prompt="hi", max_tokens=4,
                                         extra_body={"guided_regex": "[0-9"})
    assert caught.value.body["param"] == "guided_regex"
    with pytest.raises(openai.BadRequestError, match="one kind of structured output at a time"):
        openai_client.completions.create(model=MODEL_NAME, prompt="hi", max_tokens=4,
                                         extra_body={"guided_regex": "a", "guided_choice": ["b"]})
    response = httpx2.post(f"{served.url}/generate", timeout=60, json={
        "inputs": "hi", "parameters": {"grammar": {"type": "regex", "value": "(unclosed"}}})
    assert response.status_code == 422 and response.json()["error_type"] == "validation"
    assert "`grammar`" in response.json()["error"] and "unclosed group" in response.json()["error"]
    response = httpx2.post(f"{served.url}/generate", timeout=60, json={
        "inputs": "hi", "parameters": {"grammar": {"type": "xml", "value": "<a/>"}}})
    assert response.status_code == 422 and "grammar type must be" in response.json()["error"]
