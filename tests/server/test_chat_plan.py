"""Tool calling on /v1/chat/completions with the openai SDK unchanged against a real server: forced calls
(tool_choice "required" and a named function) valid against the schema, streamed tool-call deltas, "none",
tool results round-tripping through the template, bad tool requests in the OpenAI error shape; and a tiny random
model whose forced calls still validate."""

import json

import openai
import pytest
import torch

from tests.server.conftest import MODEL_NAME
from tokenmill.server.chat_plan import function_tools, plan_chat
from tokenmill.server.settings import ServerSettings

WEATHER_SCHEMA = {"type": "object",
                  "properties": {"city": {"type": "string", "enum": ["Paris", "Rome", "Oslo"]},
                                 "days": {"type": "integer", "minimum": 1, "maximum": 7},
                                 "metric": {"type": "boolean"}},
                  "required": ["city", "days", "metric"], "additionalProperties": False}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "The weather forecast of a city",
                                           "parameters": WEATHER_SCHEMA}},
         {"type": "function", "function": {"name": "get_time", "description": "The local time",
                                           "parameters": {"type": "object", "properties": {}}}}]
ASK = [{"role": "user", "content": "What will the weather be in Paris for the next 3 days?"}]


def check_weather_arguments(arguments: str) -> None:
    """WEATHER_SCHEMA checked by hand: exactly its keys, each in its range."""
    values = json.loads(arguments)
    assert set(values) == {"city", "days", "metric"}, arguments
    assert values["city"] in ("Paris", "Rome", "Oslo"), arguments
    assert type(values["days"]) is int and 1 <= values["days"] <= 7, arguments
    assert type(values["metric"]) is bool, arguments


def test_required_returns_valid_calls(openai_client):
    response = openai_client.chat.completions.create(model=MODEL_NAME, messages=ASK, tools=TOOLS,
                                                     tool_choice="required", max_tokens=60, temperature=0,
                                                     parallel_tool_calls=False)
    choice = response.choices[0]
    assert choice.finish_reason == "tool_calls", choice.message
    assert choice.message.content is None and choice.message.tool_calls
    for call in choice.message.tool_calls:
        assert call.type == "function" and call.id.startswith("call_")
        assert call.function.name in ("get_weather", "get_time")
        if call.function.name == "get_weather":
            check_weather_arguments(call.function.arguments)
        else:
            assert json.loads(call.function.arguments) == {}


def test_named_function_streams_tool_call_deltas(openai_client):
    stream = openai_client.chat.completions.create(
        model=MODEL_NAME, messages=ASK, tools=TOOLS, max_tokens=80, temperature=0.8, seed=3, stream=True,
        tool_choice={"type": "function", "function": {"name": "get_weather"}})
    calls, finish, content = {}, None, ""
    for chunk in stream:
        for choice in chunk.choices:
            content += choice.delta.content or ""
            for delta in choice.delta.tool_calls or []:
                call = calls.setdefault(delta.index, {"id": None, "name": "", "arguments": ""})
                call["id"] = delta.id or call["id"]
                call["name"] += delta.function.name or ""
                call["arguments"] += delta.function.arguments or ""
            finish = choice.finish_reason or finish
    assert finish == "tool_calls" and not content.strip()
    assert list(calls) == [0] and calls[0]["name"] == "get_weather" and calls[0]["id"].startswith("call_")
    check_weather_arguments(calls[0]["arguments"])


def test_tool_choice_none_answers_in_text(openai_client):
    response = openai_client.chat.completions.create(model=MODEL_NAME, messages=ASK, tools=TOOLS,
                                                     tool_choice="none", max_tokens=8, temperature=0)
    assert response.choices[0].message.tool_calls is None and response.choices[0].message.content


def test_tool_results_round_trip(openai_client):
    call = {"id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris", "days": 1, "metric": true}'}}
    messages = [*ASK, {"role": "assistant", "content": None, "tool_calls": [call]},
                {"role": "tool", "tool_call_id": "call_1", "content": "Sunny, 24 degrees."}]
    response = openai_client.chat.completions.create(model=MODEL_NAME, messages=messages, tools=TOOLS,
                                                     max_tokens=12, temperature=0)
    assert response.choices[0].finish_reason in ("stop", "length", "tool_calls")


class _State:
    def __init__(self, tokenizer, **settings):
        self.tokenizer, self.settings = tokenizer, ServerSettings(**settings)


def test_template_without_tools_gets_them_described_and_calls_written(smollm2):
    """SmolLM2's template renders no tools: they go into the system message, earlier calls into the content."""
    call = {"id": "c1", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}
    messages = [*ASK, {"role": "assistant", "content": None, "tool_calls": [call]},
                {"role": "tool", "tool_call_id": "c1", "content": "It is 10:00."}]
    plan = plan_chat(_State(smollm2[1]), messages, function_tools(TOOLS))
    assert '"name": "get_weather"' in plan.prompt_text and "<tool_call>" in plan.prompt_text
    assert '<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>' in plan.prompt_text
    assert "<|im_start|>tool\nIt is 10:00.<|im_end|>" in plan.prompt_text
    assert plan.tool_format.name == "hermes" and plan.structured_output is None


def test_template_with_tools_gets_them_as_transformers_passes_them(smollm2):
    """A Qwen-style template: tools= and tool_calls with arguments as objects, as transformers renders them."""
    tokenizer = smollm2[1]
    template = ("{% for t in tools %}TOOL {{ t.function.name }};{% endfor %}{% for m in messages %}"
                "{% for c in m.tool_calls or [] %}<tool_call>{{ c.function.name }} {{ c.function.arguments | tojson }}"
                "</tool_call>{% endfor %}[{{ m.role }}] {{ m.content or '' }}\n{% endfor %}")
    original = tokenizer.chat_template
    tokenizer.chat_template = template
    try:
        call = {"id": "c1", "type": "function", "function": {"name": "get_time", "arguments": '{"tz": "UTC"}'}}
        plan = plan_chat(_State(tokenizer), [*ASK, {"role": "assistant", "content": None, "tool_calls": [call]}],
                         function_tools(TOOLS), "auto")
    finally:
        tokenizer.chat_template = original
    assert "TOOL get_weather;TOOL get_time;" in plan.prompt_text
    assert '<tool_call>get_time {"tz": "UTC"}</tool_call>[assistant]' in plan.prompt_text


@pytest.mark.parametrize("extra, param", [
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "missing"}}}, "tool_choice"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tools": TOOLS, "tool_choice": "sometimes"}, "tool_choice"),
    ({"tools": [{"type": "retrieval"}]}, "tools.0.type"),
    ({"tools": TOOLS, "tool_choice": "required", "response_format": {"type": "json_object"}}, "tool_choice"),
])
def test_bad_tool_requests_rejected(openai_client, extra, param):
    with pytest.raises(openai.BadRequestError) as caught:
        openai_client.chat.completions.create(model=MODEL_NAME, messages=ASK, max_tokens=4, **extra)
    assert caught.value.body["param"] == param


@pytest.fixture(scope="module")
def tiny_random_served(tmp_path_factory, smollm2, server_factory):
    """A 1-layer random Llama over SmolLM2's tokenizer: its choices are noise, only the grammar shapes them."""
    import transformers

    from tokenmill.auto import AutoModelForCausalLM

    tokenizer = smollm2[1]
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32,
                                      num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                                      eos_token_id=tokenizer.eos_token_id)
    folder = tmp_path_factory.mktemp("tiny-random-llama")
    transformers.LlamaForCausalLM(config).save_pretrained(folder)
    running = server_factory(AutoModelForCausalLM.from_pretrained(folder, progress=False), tokenizer)
    yield running
    running.stop()


def test_tiny_random_model_forced_call_validates(tiny_random_served):
    client = openai.OpenAI(base_url=f"{tiny_random_served.url}/v1", api_key="unused", max_retries=0, timeout=120)
    for seed in (0, 1, 2):
        response = client.chat.completions.create(model=MODEL_NAME, messages=ASK, tools=TOOLS[:1], max_tokens=300,
                                                  tool_choice="required", parallel_tool_calls=False,
                                                  temperature=1.0, seed=seed)
        choice = response.choices[0]
        assert choice.finish_reason == "tool_calls", choice.message
        assert [call.function.name for call in choice.message.tool_calls] == ["get_weather"]
        check_weather_arguments(choice.message.tool_calls[0].function.arguments)


def test_template_kwargs_reach_the_template(smollm2):
    from tokenmill.server.errors import APIError

    tokenizer = smollm2[1]
    original = tokenizer.chat_template
    tokenizer.chat_template = "{% for m in messages %}{{ m.content }}{% endfor %}{% if enable_thinking %}<think>{% endif %}"
    try:
        assert plan_chat(_State(tokenizer), ASK, [], template_kwargs={"enable_thinking": True}).prompt_text.endswith(
            "<think>")
        assert "<think>" not in plan_chat(_State(tokenizer), ASK, [], template_kwargs={}).prompt_text
        with pytest.raises(APIError, match="'tools'"):
            plan_chat(_State(tokenizer), ASK, [], template_kwargs={"tools": []})
    finally:
        tokenizer.chat_template = original
