"""What issue 17 found broken for unchanged clients: InferenceClient's chat model name, accepted-and-ignored
arguments refused clearly, tools now served, an unknown adapter_id a 404, /tokenize spans, /detokenize, /version,
an offline /docs."""

import httpx2
import pytest

PROMPT = "The capital of France is"


def test_inference_client_chat_completion_with_base_url(tgi_client):
    # the client sends model "dummy" with base_url (huggingface_hub's hf_inference provider); was a 404
    out = tgi_client.chat_completion([{"role": "user", "content": "Say hi"}], max_tokens=4)
    assert out.choices[0].message.content and out.usage.completion_tokens <= 4


@pytest.mark.parametrize("name", ["tgi", "dummy", "smollm2"])
def test_chat_accepts_inference_client_default_names(served, name):
    reply = httpx2.post(f"{served.url}/v1/chat/completions", timeout=120,
                        json={"model": name, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
    assert reply.status_code == 200, reply.text


def test_chat_and_completions_keep_404_for_a_wrong_model(served):
    chat = httpx2.post(f"{served.url}/v1/chat/completions",
                       json={"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]})
    assert chat.status_code == 404 and "'gpt-4o' does not exist" in chat.json()["error"]["message"]
    completion = httpx2.post(f"{served.url}/v1/completions", json={"model": "tgi", "prompt": PROMPT})
    assert completion.status_code == 404


def test_tools_are_no_longer_ignored(openai_client, served):
    """Was: accepted, then free text with tool_calls=None; now served (tests/server/test_chat_plan.py has more)."""
    import openai

    tool = {"type": "function", "function": {"name": "weather", "parameters": {
        "type": "object", "properties": {}, "additionalProperties": False}}}
    messages = [{"role": "user", "content": "Weather in Paris?"}]
    called = openai_client.chat.completions.create(model="smollm2", messages=messages, tools=[tool],
                                                   tool_choice="required", parallel_tool_calls=False, max_tokens=30,
                                                   temperature=0)
    assert [call.function.name for call in called.choices[0].message.tool_calls] == ["weather"]
    with pytest.raises(openai.BadRequestError, match="'required' needs tools"):
        openai_client.chat.completions.create(model="smollm2", messages=messages, tool_choice="required",
                                              max_tokens=2)
    ignored = openai_client.chat.completions.create(model="smollm2", messages=messages, tools=[tool],
                                                    tool_choice="none", max_tokens=2)
    assert ignored.choices[0].message.tool_calls is None


def test_an_unknown_adapter_id_is_a_clear_404(served):
    # adapter_id selects a loaded LoRA adapter (tests/server/test_lora.py); one the server lacks is not found
    reply = httpx2.post(f"{served.url}/generate", json={"inputs": PROMPT, "parameters": {"adapter_id": "my/lora"}})
    assert reply.status_code == 404, reply.text
    assert reply.json()["error_type"] == "not_found" and "'my/lora' does not exist" in reply.json()["error"]


def test_tokenize_spans_are_character_offsets(served):
    text = "Hi 😀 café"
    pieces = httpx2.post(f"{served.url}/tokenize", json={"inputs": text}).json()
    assert all(p["text"] == text[p["start"]:p["stop"]] and p["start"] < p["stop"] for p in pieces)
    assert "�" not in "".join(p["text"] for p in pieces)  # byte tokens printed as U+FFFD before
    assert pieces[0]["start"] == 0 and pieces[-1]["stop"] == len(text)


def test_detokenize_inverts_tokenize(served):
    text = "Hi 😀 café"
    ids = [p["id"] for p in httpx2.post(f"{served.url}/tokenize", json={"inputs": text}).json()]
    assert httpx2.post(f"{served.url}/detokenize", json={"tokens": ids}).json() == {"prompt": text}
    bad = httpx2.post(f"{served.url}/detokenize", json={"tokens": [10 ** 9]})
    assert bad.status_code == 422 and "outside the vocabulary" in bad.text


def test_version_and_offline_docs(served):
    from tokenmill.version import __version__

    assert httpx2.get(f"{served.url}/version").json() == {"version": __version__}
    docs = httpx2.get(f"{served.url}/docs")
    assert docs.status_code == 200 and "<script" not in docs.text and "cdn" not in docs.text.lower()
    assert "/v1/chat/completions" in docs.text and "/openapi.json" in docs.text
    assert httpx2.get(f"{served.url}/openapi.json").json()["info"]["version"] == __version__
