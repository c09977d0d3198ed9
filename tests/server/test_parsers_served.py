"""The parser switches (`--reasoning-parser`, `--tool-call-parser`) on a real server: reasoning_content split
whole and streamed (the output shaped by a regex so SmolLM2 writes `<think>`), Llama 3 JSON tool calls parsed,
the flags' choices, and unknown names refused at start-up."""

import argparse

import openai
import pytest

from tests.server.conftest import MODEL_NAME
from tests.server.test_chat_plan import ASK, TOOLS, check_weather_arguments
from tokenmill.commands import serve
from tokenmill.server.settings import ServerSettings

THINK = {"guided_regex": r"<think>[a-z]{2,6}</think>(Paris|Rome)"}
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def client(smollm2, server_factory):
    running = server_factory(*smollm2, reasoning_parser="qwen3", tool_call_parser="llama3_json")
    yield openai.OpenAI(base_url=f"{running.url}/v1", api_key="unused", max_retries=0, timeout=120)
    running.stop()


def test_reasoning_content_whole_and_streamed(client):
    response = client.chat.completions.create(model=MODEL_NAME, messages=QUESTION, max_tokens=20, temperature=0,
                                              extra_body=THINK)
    message = response.choices[0].message
    reasoning = message.model_extra["reasoning_content"]
    assert reasoning.isalpha() and message.content in ("Paris", "Rome")
    stream = client.chat.completions.create(model=MODEL_NAME, messages=QUESTION, max_tokens=20, temperature=0,
                                            extra_body=THINK, stream=True)
    streamed = {"reasoning_content": "", "content": ""}
    for chunk in stream:
        for choice in chunk.choices:
            for key in streamed:
                streamed[key] += (choice.delta.model_extra or {}).get(key) or getattr(choice.delta, key, "") or ""
    assert streamed == {"reasoning_content": reasoning, "content": message.content}


def test_llama3_json_calls(client):
    response = client.chat.completions.create(model=MODEL_NAME, messages=ASK, tools=TOOLS[:1], max_tokens=60,
                                              tool_choice="required", parallel_tool_calls=False, temperature=0)
    choice = response.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.tool_calls[0].function.name == "get_weather"
    check_weather_arguments(choice.message.tool_calls[0].function.arguments)


def test_flags_choices_and_unknown_names_refused():
    parser = argparse.ArgumentParser()
    serve.add_args(parser)
    args = parser.parse_args(["--tool-call-parser", "mistral", "--reasoning-parser", "deepseek_r1"])
    assert (args.tool_call_parser, args.reasoning_parser) == ("mistral", "deepseek_r1")
    assert parser.parse_args([]).tool_call_parser == "auto"
    with pytest.raises(SystemExit):
        parser.parse_args(["--tool-call-parser", "gpt"])
    with pytest.raises(ValueError, match="hermes"):
        ServerSettings(tool_call_parser="gpt")
    with pytest.raises(ValueError, match="deepseek_r1"):
        ServerSettings(reasoning_parser="o1")
