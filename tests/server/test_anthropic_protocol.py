"""Anthropic request bodies as chat turns, on fixed bodies: content blocks to chat messages, tool_choice, tools,
thinking, stop reasons; unsupported blocks refused by name."""

import pytest

from tokenmill.server.anthropic_protocol import MessagesRequest, stop_reason
from tokenmill.server.chat_plan import AssistantOutput
from tokenmill.server.errors import APIError


def _request(**fields):
    return MessagesRequest(**{"model": "m", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}],
                              **fields})


def test_blocks_become_chat_messages():
    body = _request(system=[{"type": "text", "text": "Be brief."}], messages=[
        {"role": "user", "content": [{"type": "text", "text": "Weather?"}]},
        {"role": "assistant", "content": [{"type": "thinking", "thinking": "use the tool", "signature": ""},
                                          {"type": "text", "text": "Checking."},
                                          {"type": "tool_use", "id": "toolu_1", "name": "w", "input": {"c": "P"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "Sunny"},
                                     {"type": "text", "text": "And tomorrow?"}]}])
    assert body.chat_messages() == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": "Checking.", "reasoning_content": "use the tool",
         "tool_calls": [{"id": "toolu_1", "type": "function", "function": {"name": "w", "arguments": '{"c": "P"}'}}]},
        {"role": "tool", "tool_call_id": "toolu_1", "content": "Sunny"},
        {"role": "user", "content": "And tomorrow?"}]


def test_tool_result_alone_adds_no_empty_user_message():
    body = _request(messages=[{"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "t", "content": [{"type": "text", "text": "42"}]}]}])
    assert body.chat_messages() == [{"role": "tool", "tool_call_id": "t", "content": "42"}]


@pytest.mark.parametrize("choice, expected", [
    (None, ("auto", True)), ({"type": "any"}, ("required", True)), ({"type": "none"}, ("none", True)),
    ({"type": "tool", "name": "w", "disable_parallel_tool_use": True},
     ({"type": "function", "function": {"name": "w"}}, False)),
])
def test_tool_choice(choice, expected):
    assert _request(tool_choice=choice).openai_tool_choice() == expected


def test_tools_and_thinking():
    body = _request(tools=[{"name": "w", "description": "weather", "input_schema": {"type": "object"}}],
                    thinking={"type": "enabled", "budget_tokens": 1024})
    assert body.tool_specs() == [{"name": "w", "description": "weather", "parameters": {"type": "object"}}]
    assert body.template_kwargs() == {"enable_thinking": True}
    assert _request(thinking={"type": "disabled"}).template_kwargs() == {"enable_thinking": False}
    assert _request().template_kwargs() is None


@pytest.mark.parametrize("fields, param", [
    ({"messages": [{"role": "user", "content": [{"type": "image", "source": {}}]}]}, "messages.0"),
    ({"messages": [{"role": "system", "content": "x"}]}, "messages.0.role"),
    ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "tools.0"),
    ({"tool_choice": {"type": "sometimes"}}, "tool_choice"),
    ({"thinking": {"type": "maybe"}}, "thinking"),
])
def test_unsupported_refused(fields, param):
    body = _request(**fields)
    with pytest.raises(APIError) as caught:
        body.chat_messages(), body.tool_specs(), body.openai_tool_choice(), body.template_kwargs()
    assert caught.value.param == param


def test_stop_reasons():
    output = AssistantOutput(None, "", None)
    assert stop_reason("length", None, output, []) == ("max_tokens", None)
    assert stop_reason("stop", "END", output, ["END"]) == ("stop_sequence", "END")
    assert stop_reason("stop", None, output, ["END"]) == ("end_turn", None)


def test_effort_and_thinking_reach_the_template():
    body = _request(thinking={"type": "enabled", "budget_tokens": 1024}, output_config={"effort": "high"})
    assert body.template_kwargs() == {"enable_thinking": True, "reasoning_effort": "high"}
    with pytest.raises(APIError, match="output_config.effort"):
        _request(output_config={"effort": "extreme"}).template_kwargs()
    with pytest.raises(APIError, match="output_config.task_budget"):
        _request(output_config={"task_budget": 5}).structured_output()


def test_an_argument_that_would_be_ignored_is_refused():
    from pydantic import ValidationError
    with pytest.raises(ValidationError):
        _request(inference_geo="eu")
    assert _request(service_tier="auto", metadata={"user_id": "u"}).service_tier == "auto"
