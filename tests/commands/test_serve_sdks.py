"""Issue 17's proof: the `openai`, `anthropic` and `huggingface_hub` SDKs, unchanged, against a real `tokenmill
serve` process on the embedded SmolLM2 (one process for the module). Greedy answers are compared with the same
prompt run through tokenmill in-process, or with the same request through another route; forced tool calls are
checked against their schema."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import anthropic
import httpx2
import openai
import pytest
import torch
from huggingface_hub import InferenceClient

from tests.server.test_chat_plan import ASK, TOOLS, WEATHER_SCHEMA, check_weather_arguments

REPO_ROOT = Path(__file__).resolve().parents[2]
MODEL_NAME = "smollm2"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
GREEDY = {"temperature": 0}  # the anthropic SDK no longer sends sampling settings itself; the API still takes them
NAMED = {"type": "function", "function": {"name": "get_weather"}}
START_SECONDS = 180  # loading the embedded model takes a few seconds; a busy shared CPU many more


def _free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_for_health(process: subprocess.Popen, url: str, log: Path) -> None:
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"tokenmill serve exited with {process.returncode}:\n{log.read_text()}")
        try:
            if httpx2.get(f"{url}/health", timeout=5).status_code == 200:
                return
        except httpx2.TransportError:
            pass
        time.sleep(0.2)
    pytest.fail(f"tokenmill serve was not healthy within {START_SECONDS} s:\n{log.read_text()}")


@pytest.fixture(scope="module")
def server_url(tmp_path_factory):
    port = _free_loopback_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    command = [sys.executable, "-m", "tokenmill", "serve", "--host", "127.0.0.1", "--port", str(port),
               "--served-model-name", MODEL_NAME, "--num-kv-blocks", "128", "--default-max-tokens", "16",
               "--threads", "1", "--log-level", "warning"]
    with open(log, "w") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env=env, cwd=REPO_ROOT)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_for_health(process, url, log)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(30)


@pytest.fixture(scope="module")
def in_process(smollm2_gguf):
    from tokenmill import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(smollm2_gguf, progress=False), AutoTokenizer.from_pretrained(
        smollm2_gguf)


@pytest.fixture(scope="module")
def openai_client(server_url):
    return openai.OpenAI(base_url=f"{server_url}/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def chat_answer(openai_client):
    """The served greedy answer to QUESTION, the other routes' reference."""
    return openai_client.chat.completions.create(model=MODEL_NAME, messages=QUESTION, max_tokens=10, temperature=0)


@pytest.fixture(scope="module")
def named_call(openai_client):
    """The served greedy answer to ASK with get_weather forced by name, for the streamed one to equal."""
    return openai_client.chat.completions.create(model=MODEL_NAME, messages=ASK, tools=TOOLS, max_tokens=40,
                                                 tool_choice=NAMED, temperature=0).choices[0]


def _greedy_in_process(in_process, prompt_ids: list[int], new_tokens: int) -> str:
    model, tokenizer = in_process
    with torch.no_grad():
        output = model.generate(torch.tensor([prompt_ids]), max_new_tokens=new_tokens, do_sample=False)
    return tokenizer.decode(output[0, len(prompt_ids):].tolist(), skip_special_tokens=True)


def test_openai_chat_whole_and_streamed_equal_in_process_greedy(openai_client, chat_answer, in_process):
    tokenizer = in_process[1]
    prompt = list(tokenizer.apply_chat_template(QUESTION, add_generation_prompt=True, tokenize=True)["input_ids"])
    assert chat_answer.usage.prompt_tokens == len(prompt)
    text = chat_answer.choices[0].message.content
    assert text == _greedy_in_process(in_process, prompt, 10) and "Paris" in text
    stream = openai_client.chat.completions.create(model=MODEL_NAME, messages=QUESTION, max_tokens=10,
                                                   temperature=0, stream=True)
    chunks = [chunk.choices[0] for chunk in stream if chunk.choices]
    assert "".join(choice.delta.content or "" for choice in chunks) == text
    assert chunks[-1].finish_reason == chat_answer.choices[0].finish_reason


def test_openai_forced_tool_calls_validate(openai_client, named_call):
    required = openai_client.chat.completions.create(model=MODEL_NAME, messages=ASK, tools=TOOLS[:1], max_tokens=40,
                                                     tool_choice="required", parallel_tool_calls=False,
                                                     temperature=0).choices[0]
    for choice in (required, named_call):
        assert choice.finish_reason == "tool_calls" and choice.message.content is None
        [call] = choice.message.tool_calls
        assert call.type == "function" and call.id.startswith("call_") and call.function.name == "get_weather"
        check_weather_arguments(call.function.arguments)


def test_openai_streamed_tool_call_deltas_reassemble_to_the_whole(openai_client, named_call):
    [whole] = named_call.message.tool_calls
    calls, finish = {}, None
    for chunk in openai_client.chat.completions.create(model=MODEL_NAME, messages=ASK, tools=TOOLS, max_tokens=40,
                                                       tool_choice=NAMED, temperature=0, stream=True):
        for choice in chunk.choices:
            assert not (choice.delta.content or "").strip()
            for delta in choice.delta.tool_calls or []:
                call = calls.setdefault(delta.index, {"id": None, "name": "", "arguments": ""})
                call["id"] = delta.id or call["id"]
                call["name"] += (delta.function and delta.function.name) or ""
                call["arguments"] += (delta.function and delta.function.arguments) or ""
            finish = choice.finish_reason or finish
    assert finish == "tool_calls" and list(calls) == [0] and calls[0]["id"].startswith("call_")
    assert (calls[0]["name"], calls[0]["arguments"]) == (whole.function.name, whole.function.arguments)


def test_openai_responses_whole_streamed_and_function_call(openai_client, chat_answer):
    request = dict(model=MODEL_NAME, input=QUESTION[0]["content"], max_output_tokens=10, temperature=0)
    response = openai_client.responses.create(**request)
    assert response.id.startswith("resp_") and response.output_text == chat_answer.choices[0].message.content
    events = list(openai_client.responses.create(**request, stream=True))
    kinds = [event.type for event in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == ("response.completed" if response.status == "completed" else "response.incomplete")
    assert [event.sequence_number for event in events] == list(range(len(events)))
    assert "".join(event.delta for event in events if event.type == "response.output_text.delta") == \
        response.output_text == events[-1].response.output_text
    weather = {"type": "function", "name": "get_weather", "parameters": WEATHER_SCHEMA}
    called = openai_client.responses.create(model=MODEL_NAME, input=ASK[0]["content"], tools=[weather],
                                            tool_choice="required", max_output_tokens=40, temperature=0)
    [call] = called.output
    assert call.type == "function_call" and call.name == "get_weather"
    check_weather_arguments(call.arguments)


def test_anthropic_messages_whole_and_streamed(server_url, chat_answer):
    client = anthropic.Anthropic(base_url=server_url, api_key="unused", max_retries=0, timeout=120)
    message = client.messages.create(model=MODEL_NAME, max_tokens=10, messages=QUESTION, extra_body=GREEDY)
    assert [block.type for block in message.content] == ["text"]
    assert message.content[0].text == chat_answer.choices[0].message.content
    assert message.stop_reason == ("end_turn" if chat_answer.choices[0].finish_reason == "stop" else "max_tokens")
    with client.messages.stream(model=MODEL_NAME, max_tokens=10, messages=QUESTION, extra_body=GREEDY) as stream:
        assert "".join(stream.text_stream) == message.content[0].text
        final = stream.get_final_message()
    assert final.content[0].text == message.content[0].text and final.stop_reason == message.stop_reason
    weather = {"name": "get_weather", "input_schema": WEATHER_SCHEMA}
    used = client.messages.create(model=MODEL_NAME, max_tokens=40, messages=ASK, tools=[weather],
                                  tool_choice={"type": "tool", "name": "get_weather"}, extra_body=GREEDY)
    assert used.stop_reason == "tool_use" and [block.type for block in used.content] == ["tool_use"]
    check_weather_arguments(json.dumps(used.content[0].input))


def test_inference_client_text_generation_and_chat_completion(server_url, chat_answer, in_process):
    client = InferenceClient(base_url=server_url, timeout=120)
    prompt = "The capital of France is"
    text = client.text_generation(prompt, max_new_tokens=6)  # TGI's default: greedy
    assert text == _greedy_in_process(in_process, list(in_process[1].encode(prompt)), 6)
    reply = client.chat_completion(QUESTION, max_tokens=10, temperature=0)  # sends model "dummy" (see issue 17)
    assert reply.choices[0].message.content == chat_answer.choices[0].message.content
    streamed = "".join(chunk.choices[0].delta.content or "" for chunk in client.chat_completion(
        QUESTION, max_tokens=10, temperature=0, stream=True) if chunk.choices)
    assert streamed == reply.choices[0].message.content


CAPITAL_SCHEMA = {"type": "object", "properties": {"capital": {"type": "string", "enum": ["Paris", "Rome", "Oslo"]}},
                  "required": ["capital"], "additionalProperties": False}


def test_inference_client_named_tool_choice(server_url):
    """huggingface_hub's named tool_choice is TGI's {"function": {"name": ...}}, without OpenAI's "type"."""
    client = InferenceClient(base_url=server_url, timeout=120)
    reply = client.chat_completion(ASK, tools=TOOLS, tool_choice={"function": {"name": "get_weather"}},
                                   max_tokens=40, temperature=0)
    [call] = reply.choices[0].message.tool_calls
    assert reply.choices[0].finish_reason == "tool_calls" and call.function.name == "get_weather"
    check_weather_arguments(call.function.arguments)


@pytest.mark.parametrize("response_format", [
    # OpenAI's shape: the client rewrites it to {"type": "json_object", "value": schema} (it was served as any object)
    {"type": "json_schema", "json_schema": {"name": "answer", "schema": CAPITAL_SCHEMA}},
    {"type": "json", "value": CAPITAL_SCHEMA},  # TGI's grammar shape, as huggingface_hub documents it
])
def test_inference_client_response_format_schema_is_kept(server_url, response_format):
    client = InferenceClient(base_url=server_url, timeout=120)
    reply = client.chat_completion(QUESTION, response_format=response_format, max_tokens=12, temperature=0)
    answer = json.loads(reply.choices[0].message.content)
    assert set(answer) == {"capital"} and answer["capital"] in ("Paris", "Rome", "Oslo")


def test_inference_client_regex_response_format(server_url):
    client = InferenceClient(base_url=server_url, timeout=120)
    reply = client.chat_completion(QUESTION, response_format={"type": "regex", "value": "(Paris|Rome|Oslo)"},
                                   max_tokens=6, temperature=0)
    assert reply.choices[0].message.content in ("Paris", "Rome", "Oslo")
