"""Responses request bodies as chat turns, on fixed bodies: input items to chat messages, tools, tool_choice,
text.format; the output items of a finished answer."""

import pytest

from tokenmill.server.chat_plan import AssistantOutput
from tokenmill.server.errors import APIError
from tokenmill.server.responses_protocol import ResponsesRequest, conversation_after, output_items


def test_items_become_chat_messages():
    body = ResponsesRequest(input=[
        {"role": "developer", "content": "Be brief."},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Weather?"}]},
        {"type": "reasoning", "id": "rs_1", "summary": []},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Checking."}]},
        {"type": "function_call", "call_id": "call_1", "name": "w", "arguments": '{"c": "P"}'},
        {"type": "function_call", "call_id": "call_2", "name": "t", "arguments": ""},
        {"type": "function_call_output", "call_id": "call_1", "output": "Sunny"}])
    assert body.input_messages() == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": "Checking.", "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "w", "arguments": '{"c": "P"}'}},
            {"id": "call_2", "type": "function", "function": {"name": "t", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "Sunny"}]
    assert ResponsesRequest(input="hi").input_messages() == [{"role": "user", "content": "hi"}]


def test_tools_choice_and_format():
    body = ResponsesRequest(input="x", tools=[{"type": "function", "name": "w", "parameters": {"type": "object"}}],
                            tool_choice={"type": "function", "name": "w"},
                            text={"format": {"type": "json_schema", "name": "s", "schema": {"type": "object"}}})
    assert body.tool_specs() == [{"name": "w", "description": "", "parameters": {"type": "object"}}]
    assert body.chat_tool_choice() == {"type": "function", "function": {"name": "w"}}
    assert body.structured_output() == ("json_schema", {"type": "object"})
    assert ResponsesRequest(input="x", text={"format": {"type": "text"}}).structured_output() is None


@pytest.mark.parametrize("fields, param", [
    ({"tools": [{"type": "file_search"}]}, "tools.0"),
    ({"tool_choice": {"type": "allowed_tools"}}, "tool_choice"),
    ({"text": {"format": {"type": "yaml"}}}, "text.format"),
    ({"input": [{"role": "critic", "content": "x"}]}, "input.0"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "u"}]}]}, "input.0"),
    ({"input": [{"role": "user"}]}, "input.0"),
    ({"input": [{"role": "user", "content": None}]}, "input.0"),
    ({"input": [{"role": "user", "content": [{"type": "input_text"}]}]}, "input.0"),
    ({"input": [{"role": "user", "content": [{"type": "input_text", "text": 5}]}]}, "input.0"),
    ({"input": [{"role": "user", "content": "x"}, {"type": "function_call_output", "call_id": "c"}]}, "input.1"),
])
def test_unsupported_refused(fields, param):
    body = ResponsesRequest(**{"input": "x", **fields})
    with pytest.raises(APIError) as caught:
        body.input_messages(), body.tool_specs(), body.chat_tool_choice(), body.structured_output()
    assert caught.value.param == param


def test_output_items_and_the_stored_conversation():
    output = AssistantOutput("qwen3", "", None)
    output.step("<think>hm</think>Hello", finished=True)
    items = output_items(output)
    assert [item["type"] for item in items] == ["reasoning", "message"]
    assert items[0]["content"] == [{"type": "reasoning_text", "text": "hm"}]
    assert items[1]["content"][0]["text"] == "Hello"
    history = [{"role": "user", "content": "hi"}]
    assert conversation_after(history, output) == [*history, {"role": "assistant", "content": "Hello"}]


def test_reasoning_effort_reaches_the_template_and_a_summary_is_refused():
    assert ResponsesRequest(input="hi", reasoning={"effort": "low"}).template_kwargs() == {"reasoning_effort": "low"}
    assert ResponsesRequest(input="hi").template_kwargs() is None
    with pytest.raises(APIError, match="reasoning.summary"):
        ResponsesRequest(input="hi", reasoning={"summary": "auto"}).refuse_unsupported()
    with pytest.raises(APIError, match="include"):
        ResponsesRequest(input="hi", include=["reasoning.encrypted_content"]).refuse_unsupported()


@pytest.mark.parametrize("extra", [{"max_tool_calls": 3}, {"truncation": "auto"}, {"reasoning": {"effort": "max"}}])
def test_an_argument_that_would_be_ignored_is_refused(extra):
    from pydantic import ValidationError
    with pytest.raises(ValidationError):
        ResponsesRequest(input="hi", **extra)
