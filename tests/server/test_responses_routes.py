"""The openai SDK's Responses API, unchanged, against a real server: text equal to the chat route's, the streamed
event sequence, instructions, function tools (forced, streamed) with function_call_output inputs,
previous_response_id from the store (and a clear 404 for an unknown id), text.format, and the store's bound."""

import json

import openai
import pytest

from tests.server.conftest import MODEL_NAME
from tests.server.test_chat_plan import ASK, WEATHER_SCHEMA, check_weather_arguments
from tokenmill.server.responses_protocol import ResponseStore

QUESTION = "What is the capital of France?"
WEATHER_TOOL = {"type": "function", "name": "get_weather", "description": "The weather forecast of a city",
                "parameters": WEATHER_SCHEMA}


def test_text_equals_chat_completion(openai_client):
    response = openai_client.responses.create(model=MODEL_NAME, input=QUESTION, max_output_tokens=10,
                                              temperature=0)
    chat = openai_client.chat.completions.create(model=MODEL_NAME, max_tokens=10, temperature=0,
                                                 messages=[{"role": "user", "content": QUESTION}])
    assert response.object == "response" and response.id.startswith("resp_")
    assert response.output_text == chat.choices[0].message.content and "Paris" in response.output_text
    assert [item.type for item in response.output] == ["message"]
    assert response.status == ("completed" if chat.choices[0].finish_reason == "stop" else "incomplete")
    assert response.usage.input_tokens == chat.usage.prompt_tokens
    assert response.usage.output_tokens == chat.usage.completion_tokens


def test_streamed_event_sequence(openai_client):
    whole = openai_client.responses.create(model=MODEL_NAME, input=QUESTION, max_output_tokens=10, temperature=0,
                                           instructions="Answer in one sentence.")
    events = list(openai_client.responses.create(model=MODEL_NAME, input=QUESTION, max_output_tokens=10,
                                                 temperature=0, instructions="Answer in one sentence.",
                                                 stream=True))
    kinds = [event.type for event in events]
    assert kinds[:5] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added", "response.output_text.delta"]
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done",
                          "response.completed" if whole.status == "completed" else "response.incomplete"]
    assert [event.sequence_number for event in events] == list(range(len(events)))
    text = "".join(event.delta for event in events if event.type == "response.output_text.delta")
    assert text == whole.output_text == events[-1].response.output_text
    with openai_client.responses.stream(model=MODEL_NAME, input=QUESTION, max_output_tokens=10, temperature=0,
                                        instructions="Answer in one sentence.") as stream:
        assert stream.get_final_response().output_text == text


def test_forced_function_call_and_its_output_in_the_next_turn(openai_client):
    response = openai_client.responses.create(model=MODEL_NAME, input=ASK, tools=[WEATHER_TOOL],
                                              tool_choice={"type": "function", "name": "get_weather"},
                                              max_output_tokens=60, temperature=0)
    assert [item.type for item in response.output] == ["function_call"]
    call = response.output[0]
    assert call.name == "get_weather" and call.call_id.startswith("call_")
    check_weather_arguments(call.arguments)
    follow_up = openai_client.responses.create(
        model=MODEL_NAME, previous_response_id=response.id, tools=[WEATHER_TOOL], tool_choice="none",
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "Sunny, 24 degrees."}],
        max_output_tokens=6, temperature=0)
    assert follow_up.output[0].type == "message" and follow_up.previous_response_id == response.id
    assert openai_client.responses.retrieve(response.id).output[0].call_id == call.call_id


def test_streamed_function_call(openai_client):
    events = list(openai_client.responses.create(model=MODEL_NAME, input=ASK, tools=[WEATHER_TOOL],
                                                 tool_choice="required", parallel_tool_calls=False,
                                                 max_output_tokens=60, temperature=0, stream=True))
    kinds = [event.type for event in events]
    assert kinds == ["response.created", "response.in_progress", "response.output_item.added",
                     "response.function_call_arguments.delta", "response.function_call_arguments.done",
                     "response.output_item.done", "response.completed"]
    check_weather_arguments(events[4].arguments)
    assert events[-1].response.output[0].arguments == events[4].arguments


def test_items_input_and_text_format(openai_client):
    schema = {"type": "object", "properties": {"capital": {"type": "string", "maxLength": 20}},
              "required": ["capital"], "additionalProperties": False}
    response = openai_client.responses.create(
        model=MODEL_NAME, max_output_tokens=30, temperature=0,
        input=[{"role": "developer", "content": "Reply in JSON."},
               {"type": "message", "role": "user", "content": [{"type": "input_text", "text": QUESTION}]}],
        text={"format": {"type": "json_schema", "name": "capital", "schema": schema, "strict": True}})
    assert set(json.loads(response.output_text)) == {"capital"}


def test_unknown_previous_response_is_404(openai_client):
    with pytest.raises(openai.NotFoundError) as caught:
        openai_client.responses.create(model=MODEL_NAME, input="hi", previous_response_id="resp_missing")
    assert caught.value.body["param"] == "previous_response_id" and "resp_missing" in caught.value.body["message"]
    with pytest.raises(openai.BadRequestError):
        openai_client.responses.create(model=MODEL_NAME, input="hi", tools=[{"type": "web_search"}])
    with pytest.raises(openai.BadRequestError):
        openai_client.responses.create(model=MODEL_NAME, input=[{"type": "input_image", "image_url": "x"}])
    with pytest.raises(openai.BadRequestError, match="input is empty"):
        openai_client.responses.create(model=MODEL_NAME, input=[])


def test_store_keeps_the_latest_only():
    store = ResponseStore(capacity=2)
    for index in range(3):
        store.put({"id": f"resp_{index}"}, [{"role": "user", "content": str(index)}])
    assert store.get("resp_2")[1] == [{"role": "user", "content": "2"}] and store.get("resp_1")
    with pytest.raises(Exception, match="resp_0"):
        store.get("resp_0")


def test_item_stream_reasoning_message_and_call():
    from tokenmill.server.chat_plan import Piece
    from tokenmill.server.responses_routes import _ItemStream
    from tokenmill.server.tool_calls import ToolCall

    stream = _ItemStream()
    pieces = [Piece(reasoning="think"), Piece(content="Hello"), Piece(calls=[ToolCall("f", '{"a": 1}')])]
    frames = [frame for piece in pieces for frame in stream.frames(piece)] + stream.close()
    events = [json.loads(frame.split("\n", 1)[1].removeprefix("data: ")) for frame in frames]
    assert [event["type"] for event in events] == [
        "response.output_item.added", "response.content_part.added", "response.reasoning_text.delta",
        "response.reasoning_text.done", "response.content_part.done", "response.output_item.done",
        "response.output_item.added", "response.content_part.added", "response.output_text.delta",
        "response.output_text.done", "response.content_part.done", "response.output_item.done",
        "response.output_item.added", "response.function_call_arguments.delta",
        "response.function_call_arguments.done", "response.output_item.done"]
    assert [event["sequence_number"] for event in events] == list(range(len(events)))
    assert [event.get("output_index") for event in events] == [0] * 6 + [1] * 6 + [2] * 4
    assert [item["type"] for item in stream.items] == ["reasoning", "message", "function_call"]
    assert stream.items[0]["content"] == [{"type": "reasoning_text", "text": "think"}]
    assert stream.items[1]["content"][0]["text"] == "Hello" and stream.items[2]["arguments"] == '{"a": 1}'
