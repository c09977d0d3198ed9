"""The APIs' structured-output fields → (kind, value) specs, as the protocol modules translate them."""

import pytest

from tokenmill.server.openai_protocol import spec_from_openai
from tokenmill.server.tgi_protocol import spec_from_tgi

SCHEMA = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}


def test_openai_fields_map_to_specs():
    wrapped = {"type": "json_schema", "json_schema": {"name": "person", "schema": SCHEMA}}
    assert spec_from_openai(wrapped) == ("json_schema", SCHEMA)
    assert spec_from_openai({"type": "json_object"}) == ("json_schema", {"type": "object"})
    assert spec_from_openai({"type": "text"}) is None and spec_from_openai() is None
    assert spec_from_openai(guided_choice=["a", "b"]) == ("choice", ["a", "b"])
    assert spec_from_openai(guided_regex="[0-9]+") == ("regex", "[0-9]+")
    assert spec_from_openai(guided_json=SCHEMA) == ("json_schema", SCHEMA)
    assert spec_from_openai(guided_grammar="start: \"a\"") == ("grammar", "start: \"a\"")
    with pytest.raises(ValueError, match="one kind"):
        spec_from_openai(wrapped, guided_regex="a")
    with pytest.raises(ValueError, match="needs json_schema.schema"):
        spec_from_openai({"type": "json_schema"})
    with pytest.raises(ValueError, match="unknown structured-output parameter"):
        spec_from_openai(guided_xml="<a/>")


def test_tgi_grammar_maps_to_specs():
    assert spec_from_tgi({"type": "json", "value": SCHEMA}) == ("json_schema", SCHEMA)
    assert spec_from_tgi({"type": "json_schema", "value": {"name": "p", "schema": SCHEMA}}) == ("json_schema", SCHEMA)
    assert spec_from_tgi({"type": "regex", "value": "a+"}) == ("regex", "a+")
    assert spec_from_tgi(None) is None
    with pytest.raises(ValueError, match="grammar type"):
        spec_from_tgi({"type": "xml", "value": ""})


def test_response_format_in_tgi_shape_maps_to_specs():
    """huggingface_hub's InferenceClient sends TGI's shape on the chat route, and rewrites OpenAI's json_schema
    into json_object + value: the schema was dropped (any object served) before."""
    assert spec_from_openai({"type": "json_object", "value": SCHEMA}) == ("json_schema", SCHEMA)
    assert spec_from_openai({"type": "json", "value": SCHEMA}) == ("json_schema", SCHEMA)
    assert spec_from_openai({"type": "json_schema", "value": {"name": "p", "schema": SCHEMA}}) == (
        "json_schema", SCHEMA)
    assert spec_from_openai({"type": "regex", "value": "a+"}) == ("regex", "a+")
    for refused, message in [({"type": "regex"}, "needs a value"), ({"type": "text", "value": "a"}, "no value"),
                             ({"type": "json_schema", "value": SCHEMA, "json_schema": {"schema": SCHEMA}}, "not both"),
                             ({"type": "xml", "value": "a"}, "type must be")]:
        with pytest.raises(ValueError, match=message):
            spec_from_openai(refused)


def test_named_tool_choice_takes_tgis_shape_without_type():
    from tokenmill.server.openai_protocol import ChatCompletionRequest

    tools = [{"type": "function", "function": {"name": "now"}}]
    for choice in ({"function": {"name": "now"}}, {"type": "function", "function": {"name": "now"}}):
        request = ChatCompletionRequest(messages=[{"role": "user", "content": "hi"}], tools=tools, tool_choice=choice)
        assert request.tool_dicts()[1] == {"type": "function", "function": {"name": "now"}}


def test_reasoning_effort_joins_the_template_kwargs_and_an_explicit_kwarg_wins():
    from tokenmill.server.openai_protocol import ChatCompletionRequest
    messages = [{"role": "user", "content": "hi"}]
    assert ChatCompletionRequest(messages=messages, reasoning_effort="low").template_kwargs() == {
        "reasoning_effort": "low"}
    both = ChatCompletionRequest(messages=messages, reasoning_effort="low",
                                 chat_template_kwargs={"reasoning_effort": "high", "x": 1})
    assert both.template_kwargs() == {"reasoning_effort": "high", "x": 1}
    assert ChatCompletionRequest(messages=messages).template_kwargs() is None
