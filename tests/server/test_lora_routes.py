"""LoRA adapters served: `--lora` adapters selected by model= (OpenAI) and adapter_id= (TGI), listed in
/v1/models, requests for different adapters answered together exactly as alone and as peft generates them,
adapters loaded and unloaded at run time, and every misuse a clear 4xx in the API's own shape."""

import asyncio

import httpx2
import pytest
import torch

from tokenmill.auto import AutoModelForCausalLM, AutoTokenizer

from lora_oracle import make_adapter

PROMPT = "The capital of France is"
NEW_TOKENS = 8


@pytest.fixture(scope="module")
def second_lora(hf_smollm2, tmp_path_factory):
    folder = tmp_path_factory.mktemp("smollm2-lora-2")
    return folder, make_adapter(hf_smollm2, folder, ["q_proj", "v_proj", "down_proj"], seed=22, rank=4, alpha=32)


@pytest.fixture(scope="module")
def lora_served(smollm2_gguf, smollm2_lora, server_factory):
    """A server of its own (a fresh model, GGUF blocks: adapters load onto it) with `sql` from --lora."""
    model = AutoModelForCausalLM.from_pretrained(smollm2_gguf, progress=False)
    assert model.is_quantized()
    running = server_factory(model, AutoTokenizer.from_pretrained(smollm2_gguf),
                             lora_adapters={"sql": str(smollm2_lora[0])}, model_name="smollm2",
                             allow_runtime_lora=True)
    yield running
    running.stop()


def _peft_text(wrapped, tokenizer) -> str:
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    with torch.no_grad():
        out = wrapped.generate(input_ids=ids, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False)
    return tokenizer.decode(out[0, ids.shape[1]:])


def _complete(url: str, model: str) -> dict:
    reply = httpx2.post(f"{url}/v1/completions", timeout=120, json={
        "model": model, "prompt": PROMPT, "max_tokens": NEW_TOKENS, "temperature": 0, "ignore_eos": True})
    assert reply.status_code == 200, reply.text
    return reply.json()


def test_models_lists_the_adapters(lora_served, smollm2_lora):
    data = httpx2.get(f"{lora_served.url}/v1/models").json()["data"]
    assert [entry["id"] for entry in data] == ["smollm2", "sql"]
    assert data[1]["parent"] == "smollm2" and data[1]["root"] == str(smollm2_lora[0])


def test_model_name_selects_the_adapter_as_peft_generates(lora_served, smollm2_lora, hf_smollm2_tokenizer):
    chosen = _complete(lora_served.url, "sql")
    assert chosen["model"] == "sql"
    assert chosen["choices"][0]["text"] == _peft_text(smollm2_lora[1], hf_smollm2_tokenizer)
    assert _complete(lora_served.url, "smollm2")["choices"][0]["text"] != chosen["choices"][0]["text"]
    tgi = httpx2.post(f"{lora_served.url}/generate", timeout=120, json={"inputs": PROMPT, "parameters": {
        "adapter_id": "sql", "max_new_tokens": NEW_TOKENS, "decoder_input_details": False}})
    assert tgi.status_code == 200, tgi.text
    assert tgi.json()["generated_text"] == chosen["choices"][0]["text"]


def test_runtime_load_then_mixed_requests_equal_each_alone(lora_served, second_lora, hf_smollm2_tokenizer):
    url = lora_served.url
    loaded = httpx2.post(f"{url}/v1/load_lora_adapter", json={"lora_name": "chat", "lora_path": str(second_lora[0])})
    assert loaded.status_code == 200, loaded.text
    try:
        names = ["sql", "smollm2", "chat", "sql", "chat"]
        alone = {name: _complete(url, name)["choices"][0]["text"] for name in set(names)}
        assert alone["chat"] == _peft_text(second_lora[1], hf_smollm2_tokenizer)

        async def together():
            async with httpx2.AsyncClient(timeout=120) as client:
                replies = await asyncio.gather(*(client.post(f"{url}/v1/completions", json={
                    "model": name, "prompt": PROMPT, "max_tokens": NEW_TOKENS, "temperature": 0,
                    "ignore_eos": True}) for name in names))
            return [reply.json()["choices"][0]["text"] for reply in replies]

        assert asyncio.run(together()) == [alone[name] for name in names]
    finally:
        unloaded = httpx2.post(f"{url}/v1/unload_lora_adapter", json={"lora_name": "chat"})
        assert unloaded.status_code == 200, unloaded.text
    assert [entry["id"] for entry in httpx2.get(f"{url}/v1/models").json()["data"]] == ["smollm2", "sql"]
    gone = httpx2.post(f"{url}/v1/completions", json={"model": "chat", "prompt": PROMPT, "max_tokens": 2})
    assert gone.status_code == 404 and "'chat' does not exist" in gone.json()["error"]["message"]


@pytest.mark.parametrize("route, body, status, message", [
    ("/v1/load_lora_adapter", {"lora_name": "sql", "lora_path": "/nowhere"}, 400, "'sql' is already served"),
    ("/v1/load_lora_adapter", {"lora_name": "x", "lora_path": "/nowhere"}, 400, "not a local adapter folder"),
    ("/v1/load_lora_adapter", {"lora_name": "x"}, 400, "lora_path"),
    ("/v1/unload_lora_adapter", {"lora_name": "never"}, 404, "'never' cannot be found"),
])
def test_runtime_misuse_is_a_clear_openai_error(lora_served, route, body, status, message):
    reply = httpx2.post(f"{lora_served.url}{route}", json=body)
    assert reply.status_code == status, reply.text
    assert message in reply.json()["error"]["message"]
    assert [entry["id"] for entry in httpx2.get(f"{lora_served.url}/v1/models").json()["data"]] == ["smollm2", "sql"]


def test_unknown_adapter_and_disabled_runtime_loading(lora_served, served):
    tgi = httpx2.post(f"{lora_served.url}/generate", json={"inputs": PROMPT, "parameters": {"adapter_id": "nope"}})
    assert tgi.status_code == 404 and tgi.json()["error_type"] == "not_found"
    assert "'nope' does not exist; this server serves 'smollm2', 'sql'" in tgi.json()["error"]
    refused = httpx2.post(f"{served.url}/v1/load_lora_adapter", json={"lora_name": "a", "lora_path": "/tmp"})
    assert refused.status_code == 403 and "--allow-runtime-lora" in refused.json()["error"]["message"]
