"""Speculative decoding over HTTP: the `speculative` field of OpenAI and TGI bodies (same tokens as without it,
bad values refused naming the field) and the draft / acceptance counters in /metrics."""

import httpx2
import pytest

SPEC = {"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_max": 3}
PROMPT = "one two three four one two three four one two three four one two"


@pytest.fixture(scope="module")
def tiny_server(tiny_chat, server_factory):
    running = server_factory(*tiny_chat)
    yield running
    running.stop()


def _metrics(url):
    text = httpx2.get(f"{url}/metrics").text
    return {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines()
            if line and not line.startswith("#")}


def _complete(url, **extra):
    body = {"model": "smollm2", "prompt": PROMPT, "max_tokens": 24, "temperature": 0, "ignore_eos": True, **extra}
    return httpx2.post(f"{url}/v1/completions", json=body, timeout=120)


def test_openai_speculation_keeps_the_tokens_and_counts_in_metrics(tiny_server):
    plain = _complete(tiny_server.url)
    spec = _complete(tiny_server.url, speculative=SPEC)
    assert plain.status_code == spec.status_code == 200, spec.text
    assert spec.json()["choices"][0]["text"] == plain.json()["choices"][0]["text"]
    stats = tiny_server.engine.stats()
    metrics = _metrics(tiny_server.url)
    assert stats["spec_draft_tokens"] > 0
    assert metrics["tokenmill_spec_draft_tokens_total"] == stats["spec_draft_tokens"]
    assert metrics["tokenmill_spec_accepted_tokens_total"] == stats["spec_accepted_tokens"]
    assert metrics["tokenmill_spec_acceptance_rate"] == pytest.approx(stats["spec_acceptance_rate"])
    assert metrics["tokenmill_spec_tokens_per_step"] == pytest.approx(
        (stats["spec_accepted_tokens"] + stats["spec_verify_steps"]) / stats["spec_verify_steps"])


def test_tgi_speculation_keeps_the_tokens(tiny_server):
    def generate(**extra):
        body = {"inputs": PROMPT, "parameters": {"max_new_tokens": 16, **extra}}
        return httpx2.post(f"{tiny_server.url}/generate", json=body, timeout=120)

    plain, spec = generate(), generate(speculative=SPEC)
    assert plain.status_code == spec.status_code == 200, spec.text
    assert spec.json()["generated_text"] == plain.json()["generated_text"]


@pytest.mark.parametrize("value, fragment", [
    ({"num_speculative_tokens": -1}, "speculative.num_speculative_tokens"),
    ({"num_speculative_tokens": 4, "method": "eagle"}, "speculative.method"),
    ({"num_speculative_tokens": 4, "prompt_lookup_min": 0}, "speculative.prompt_lookup_min"),
    ({"num_speculative_tokens": 4, "draft": 1}, "draft"),
    ({}, "speculative.num_speculative_tokens"),
])
def test_bad_values_are_refused_naming_the_field(tiny_server, value, fragment):
    response = _complete(tiny_server.url, speculative=value)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert fragment in error["message"] and error["param"] == "speculative"
    body = {"inputs": PROMPT, "parameters": {"max_new_tokens": 4, "speculative": value}}
    response = httpx2.post(f"{tiny_server.url}/generate", json=body, timeout=60)
    assert response.status_code == 422, response.text
    assert "`speculative`" in response.json()["error"] and fragment in response.json()["error"]


def test_a_speculative_value_of_the_wrong_type_is_refused(tiny_server):
    response = _complete(tiny_server.url, speculative=4)
    assert response.status_code == 400 and "speculative" in response.text
    body = {"inputs": PROMPT, "parameters": {"max_new_tokens": 4, "speculative": "ngram"}}
    response = httpx2.post(f"{tiny_server.url}/generate", json=body, timeout=60)
    assert response.status_code == 422 and "speculative" in response.text


def test_draft_model_speculation_without_a_draft_model_is_refused(tiny_server):
    value = {"method": "draft_model", "num_speculative_tokens": 3}
    response = _complete(tiny_server.url, speculative=value)
    assert response.status_code in (400, 422), response.text
    assert "needs a draft model" in response.json()["error"]["message"]
    body = {"inputs": PROMPT, "parameters": {"max_new_tokens": 4, "speculative": value}}
    response = httpx2.post(f"{tiny_server.url}/generate", json=body, timeout=60)
    assert response.status_code in (400, 422) and "needs a draft model" in response.json()["error"]
    assert tiny_server.engine.stats()["num_running"] == 0
