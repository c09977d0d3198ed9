"""A stream that fails after its 200 ends with an error event in the API's shape, and frees its slot."""

import asyncio
import json

import httpx2
import pytest

from tokenmill.engine.async_engine import EngineStepError
from tokenmill.server.sse import ending_in_error_event


def _collect(events, path):
    async def run():
        return [event async for event in ending_in_error_event(events, path)]

    return asyncio.run(run())


def _failing(error, cleaned):
    async def events():
        try:
            yield "data: 1\n\n"
            raise error
        finally:
            cleaned.append(True)

    return events()


@pytest.mark.parametrize("error, fragment", [(KeyError("req-7"), "internal server error (KeyError)"),
                                             (EngineStepError("generation failed: boom"), "generation failed: boom")])
def test_a_failure_becomes_the_last_event(error, fragment):
    cleaned = []
    events = _collect(_failing(error, cleaned), "/v1/chat/completions")
    assert events[0] == "data: 1\n\n" and cleaned == [True]
    last = json.loads(events[-1].removeprefix("data: "))
    assert fragment in last["error"]["message"] and last["error"]["type"] == "server_error"
    tgi = json.loads(_collect(_failing(error, []), "/generate_stream")[-1].removeprefix("data: "))
    assert fragment in tgi["error"] and tgi["error_type"] == "generation"


def test_a_stream_that_ends_well_is_untouched():
    async def events():
        yield "a"
        yield "b"

    assert _collect(events(), "/generate_stream") == ["a", "b"]


@pytest.mark.parametrize("path, body", [
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "stream": True}),
    ("/v1/completions", {"prompt": "hi", "max_tokens": 4, "stream": True}),
    ("/generate_stream", {"inputs": "hi", "parameters": {"max_new_tokens": 4}}),
])
def test_a_route_stream_failing_midway_ends_with_its_error_event(served, monkeypatch, path, body):
    real_stream = served.state.stream

    async def failing_stream(prompt_ids, params):
        outputs = real_stream(prompt_ids, params)
        try:
            yield await outputs.__anext__()
            raise KeyError("req-lost")
        finally:
            await outputs.aclose()

    monkeypatch.setattr(served.state, "stream", failing_stream)
    with httpx2.Client(base_url=served.url, timeout=60) as client:
        with client.stream("POST", path, json=body) as response:
            assert response.status_code == 200
            events = [line.removeprefix("data: ") for line in response.iter_lines() if line.startswith("data:")]
        last = json.loads(events[-1])
        message = last["error"]["message"] if path.startswith("/v1/") else last["error"]
        assert "internal server error (KeyError)" in message and "[DONE]" not in events
        monkeypatch.undo()
        assert client.post("/generate", json={"inputs": "hi", "parameters": {"max_new_tokens": 1}}).status_code == 200
    assert served.state.in_flight == 0
