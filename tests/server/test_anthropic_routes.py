"""The anthropic SDK, unchanged, against a real server on /v1/messages: text (equal to the chat route's greedy
answer), streamed events in order, tool_use blocks (forced, streamed, and tool_result inputs), stop sequences,
its error shape, and x-api-key authentication."""

import json

import anthropic
import pytest

from tests.server.conftest import MODEL_NAME
from tests.server.test_chat_plan import ASK, WEATHER_SCHEMA, check_weather_arguments

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
GREEDY = {"temperature": 0}  # this SDK no longer sends sampling settings itself; the API still takes them
WEATHER_TOOL = {"name": "get_weather", "description": "The weather forecast of a city", "input_schema": WEATHER_SCHEMA}


@pytest.fixture
def client(served):
    return anthropic.Anthropic(base_url=served.url, api_key="unused", max_retries=0, timeout=120)


def test_text_equals_chat_completion(client, openai_client):
    message = client.messages.create(model=MODEL_NAME, max_tokens=10, messages=QUESTION, extra_body=GREEDY)
    chat = openai_client.chat.completions.create(model=MODEL_NAME, messages=QUESTION, max_tokens=10, extra_body=GREEDY)
    assert message.type == "message" and message.role == "assistant" and message.id.startswith("msg_")
    assert [block.type for block in message.content] == ["text"]
    assert message.content[0].text == chat.choices[0].message.content and "Paris" in message.content[0].text
    assert message.stop_reason == ("end_turn" if chat.choices[0].finish_reason == "stop" else "max_tokens")
    assert message.usage.input_tokens == chat.usage.prompt_tokens
    assert message.usage.output_tokens == chat.usage.completion_tokens


def test_streamed_events_in_order_and_equal_to_whole(client):
    whole = client.messages.create(model=MODEL_NAME, max_tokens=10, messages=QUESTION, extra_body=GREEDY,
                                   system="You are terse.")
    events = list(client.messages.create(model=MODEL_NAME, max_tokens=10, messages=QUESTION, extra_body=GREEDY,
                                         system="You are terse.", stream=True))
    kinds = [event.type for event in events]
    assert kinds[:2] == ["message_start", "content_block_start"] and kinds[-3:] == [
        "content_block_stop", "message_delta", "message_stop"]
    assert set(kinds[2:-3]) == {"content_block_delta"}
    text = "".join(event.delta.text for event in events if event.type == "content_block_delta")
    assert text == whole.content[0].text
    assert events[-2].delta.stop_reason == whole.stop_reason
    with client.messages.stream(model=MODEL_NAME, max_tokens=10, messages=QUESTION, extra_body=GREEDY,
                                system="You are terse.") as stream:
        assert "".join(stream.text_stream) == text
        assert stream.get_final_message().content[0].text == text


def test_forced_tool_use_block(client):
    message = client.messages.create(model=MODEL_NAME, max_tokens=60, messages=ASK, tools=[WEATHER_TOOL],
                                     tool_choice={"type": "tool", "name": "get_weather"}, extra_body=GREEDY)
    assert message.stop_reason == "tool_use"
    assert [block.type for block in message.content] == ["tool_use"]
    block = message.content[0]
    assert block.name == "get_weather" and block.id.startswith("toolu_")
    check_weather_arguments(json.dumps(block.input))


def test_streamed_tool_use_accumulates(client):
    with client.messages.stream(model=MODEL_NAME, max_tokens=60, messages=ASK, tools=[WEATHER_TOOL],
                                tool_choice={"type": "any", "disable_parallel_tool_use": True},
                                extra_body={"temperature": 0.7, "top_k": 20, "top_p": 0.95}) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use" and [block.type for block in final.content] == ["tool_use"]
    check_weather_arguments(json.dumps(final.content[0].input))


def test_output_config_json_schema(client):
    schema = {"type": "object", "properties": {"capital": {"type": "string", "maxLength": 20}},
              "required": ["capital"], "additionalProperties": False}
    message = client.messages.create(model=MODEL_NAME, max_tokens=30, messages=QUESTION, extra_body=GREEDY,
                                     output_config={"format": {"type": "json_schema", "schema": schema}})
    assert set(json.loads(message.content[0].text)) == {"capital"} and message.stop_reason == "end_turn"


def test_tool_result_round_trips(client):
    messages = [*ASK, {"role": "assistant", "content": [
                    {"type": "tool_use", "id": "toolu_1", "name": "get_weather",
                     "input": {"city": "Paris", "days": 3, "metric": True}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1",
                                              "content": [{"type": "text", "text": "Sunny, 24 degrees."}]}]}]
    message = client.messages.create(model=MODEL_NAME, max_tokens=6, messages=messages, tools=[WEATHER_TOOL],
                                     tool_choice={"type": "none"}, extra_body=GREEDY)
    assert message.content and message.content[0].type == "text"


def test_stop_sequence_reported(client):
    whole = client.messages.create(model=MODEL_NAME, max_tokens=10, messages=QUESTION, extra_body=GREEDY)
    word = whole.content[0].text.split()[2]
    message = client.messages.create(model=MODEL_NAME, max_tokens=10, messages=QUESTION, extra_body=GREEDY,
                                     stop_sequences=[word])
    assert message.stop_reason == "stop_sequence" and message.stop_sequence == word
    assert word not in message.content[0].text


def test_errors_in_anthropic_shape(client, served):
    import httpx2

    response = httpx2.post(f"{served.url}/v1/messages", json={"model": MODEL_NAME, "messages": QUESTION})
    assert response.status_code == 400
    body = response.json()
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    assert "max_tokens" in body["error"]["message"]
    with pytest.raises(anthropic.NotFoundError) as caught:
        client.messages.create(model="claude-sonnet-4-5", max_tokens=4, messages=QUESTION)
    assert caught.value.body["error"]["type"] == "not_found_error"
    with pytest.raises(anthropic.BadRequestError):
        client.messages.create(model=MODEL_NAME, max_tokens=4, messages=[
            {"role": "user", "content": [{"type": "image", "source": {"type": "url", "url": "http://x/y.png"}}]}])


def test_x_api_key_and_bearer_accepted(smollm2, server_factory):
    import openai

    running = server_factory(*smollm2, api_key="sesame")
    try:
        good = anthropic.Anthropic(base_url=running.url, api_key="sesame", max_retries=0)
        assert good.messages.create(model=MODEL_NAME, max_tokens=1, messages=QUESTION).content is not None
        with pytest.raises(anthropic.AuthenticationError) as caught:
            anthropic.Anthropic(base_url=running.url, api_key="wrong", max_retries=0).messages.create(
                model=MODEL_NAME, max_tokens=1, messages=QUESTION)
        assert caught.value.body["error"]["type"] == "authentication_error"
        bearer = openai.OpenAI(base_url=f"{running.url}/v1", api_key="sesame", max_retries=0)
        assert bearer.chat.completions.create(model=MODEL_NAME, messages=QUESTION, max_tokens=1).choices
        stored = bearer.responses.create(model=MODEL_NAME, input="hi", max_output_tokens=1)
        assert bearer.responses.retrieve(stored.id).id == stored.id
        with pytest.raises(openai.AuthenticationError):  # stored responses are not readable without the key
            openai.OpenAI(base_url=f"{running.url}/v1", api_key="wrong", max_retries=0).responses.retrieve(stored.id)
    finally:
        running.stop()


def _frames(texts):
    """SSE frames → (event name, data) pairs, the name checked against the data's type."""
    pairs = []
    for text in texts:
        name, data = text.split("\n", 1)
        payload = json.loads(data.removeprefix("data: "))
        assert name == f"event: {payload['type']}"
        pairs.append(payload)
    return pairs


def test_block_stream_thinking_text_and_tool_use():
    from tokenmill.server.anthropic_routes import _BlockStream
    from tokenmill.server.chat_plan import Piece
    from tokenmill.server.tool_calls import ToolCall

    blocks = _BlockStream()
    pieces = [Piece(reasoning="hm"), Piece(reasoning=" ok", content="\n"), Piece(content="Hi"),
              Piece(calls=[ToolCall("f", '{"a": 1}', id="call_x")])]
    events = _frames([frame for piece in pieces for frame in blocks.frames(piece)] + blocks.close())
    shape = [(e["type"], e.get("index"), (e.get("content_block") or e.get("delta") or {}).get("type")) for e in events]
    assert shape == [("content_block_start", 0, "thinking"), ("content_block_delta", 0, "thinking_delta"),
                     ("content_block_delta", 0, "thinking_delta"), ("content_block_stop", 0, None),
                     ("content_block_start", 1, "text"), ("content_block_delta", 1, "text_delta"),
                     ("content_block_stop", 1, None), ("content_block_start", 2, "tool_use"),
                     ("content_block_delta", 2, "input_json_delta"), ("content_block_stop", 2, None)]
    assert events[5]["delta"]["text"] == "\nHi"
    assert events[7]["content_block"] == {"type": "tool_use", "id": "toolu_x", "name": "f", "input": {}}
    assert events[8]["delta"]["partial_json"] == '{"a": 1}'


def test_block_stream_whitespace_before_calls_opens_no_text_block():
    from tokenmill.server.anthropic_routes import _BlockStream
    from tokenmill.server.chat_plan import Piece
    from tokenmill.server.tool_calls import ToolCall

    blocks = _BlockStream()
    frames = blocks.frames(Piece(content="\n")) + blocks.frames(Piece(calls=[ToolCall("f", "{}")])) + blocks.close()
    assert [event["type"] for event in _frames(frames)] == ["content_block_start", "content_block_delta",
                                                            "content_block_stop"]
