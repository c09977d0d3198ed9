"""Malformed tool, message and item bodies on the chat, Responses and Messages routes: each a 400 in its API's
own error shape, never a 500."""

import httpx2
import pytest

from tests.server.conftest import MODEL_NAME

USER = {"role": "user", "content": "hi"}
CHAT = [
    {"messages": [USER], "tools": ["get_weather"]},
    {"messages": [USER], "tools": [{"type": "function", "function": {"parameters": {}}}]},
    {"messages": [USER], "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "nope"}}}],
     "tool_choice": "required"},
    {"messages": [USER, {"role": "assistant", "tool_calls": "f()"}]},
    {"messages": [USER, {"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "{oops"}}]}]},
    {"messages": [USER], "tool_choice": 3},
    {"messages": [USER], "chat_template_kwargs": {"add_generation_prompt": False}},
]
RESPONSES = [
    {"input": [{"type": "function_call", "call_id": "c"}]},
    {"input": [{"type": "function_call_output", "call_id": "c", "output": 5}]},
    {"input": ["hi"]},
    {"input": "hi", "tools": [{"type": "function"}]},
    {"input": "hi", "text": {"format": {"type": "json_schema", "schema": {"type": "nope"}}}},
    {"input": "hi", "max_output_tokens": 0},
    {"input": "hi", "background": True},
    {"input": "hi", "conversation": "conv_1"},
]
MESSAGES = [
    {"max_tokens": 4, "messages": [{"role": "user", "content": [{"type": "tool_result"}, "x"]}]},
    {"max_tokens": 4, "messages": [USER], "tools": [{"name": "f"}]},
    {"max_tokens": 4, "messages": [USER], "tool_choice": {"type": "tool", "name": "missing"},
     "tools": [{"name": "f", "input_schema": {"type": "object"}}]},
    {"max_tokens": 4, "messages": [USER], "system": [{"type": "image"}]},
    {"max_tokens": 4, "messages": [USER], "temperature": 1.5},
    {"max_tokens": 0, "messages": [USER]},
    {"max_tokens": 4, "messages": []},
    {"max_tokens": 4, "messages": [USER], "output_config": {"format": {"type": "json_schema", "schema": {"type": 1}}}},
    {"max_tokens": 4, "messages": [USER], "output_config": {"format": {"type": "yaml"}}},
    {"max_tokens": 4, "messages": [USER], "mcp_servers": [{"type": "url", "url": "http://x", "name": "x"}]},
]


@pytest.mark.parametrize("body", CHAT)
def test_chat(served, body):
    reply = httpx2.post(f"{served.url}/v1/chat/completions", json={"model": MODEL_NAME, "max_tokens": 2, **body},
                        timeout=60)
    assert reply.status_code == 400, reply.text
    assert set(reply.json()["error"]) == {"message", "type", "param", "code"}


@pytest.mark.parametrize("body", RESPONSES)
def test_responses(served, body):
    reply = httpx2.post(f"{served.url}/v1/responses", json={"model": MODEL_NAME, **body}, timeout=60)
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize("body", MESSAGES)
def test_messages(served, body):
    reply = httpx2.post(f"{served.url}/v1/messages", json={"model": MODEL_NAME, **body}, timeout=60)
    assert reply.status_code == 400, reply.text
    assert reply.json()["type"] == "error" and reply.json()["error"]["type"] == "invalid_request_error"
