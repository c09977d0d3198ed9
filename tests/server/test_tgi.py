"""huggingface_hub.InferenceClient, unchanged, against the TGI routes; plus /info, /health, /tokenize, /metrics."""

import httpx2
import pytest

PROMPT = "The largest planet in the solar system is"


def test_text_generation_matches_openai_completion(tgi_client, openai_client):
    text = tgi_client.text_generation(PROMPT, max_new_tokens=10)
    completion = openai_client.completions.create(model="smollm2", prompt=PROMPT, max_tokens=10, temperature=0)
    assert text == completion.choices[0].text and "Jupiter" in text


def test_stream_with_details_adds_up(tgi_client):
    full = tgi_client.text_generation(PROMPT, max_new_tokens=10, details=True, decoder_input_details=True,
                                      top_n_tokens=2)
    events = list(tgi_client.text_generation(PROMPT, max_new_tokens=10, stream=True, details=True))
    assert [e.index for e in events] == list(range(1, 11))
    assert "".join(e.token.text for e in events) == events[-1].generated_text == full.generated_text
    assert [e.token.id for e in events] == [t.id for t in full.details.tokens]
    assert events[-1].details.finish_reason == full.details.finish_reason == "length"
    assert events[-1].details.generated_tokens == full.details.generated_tokens == 10
    assert all(e.details is None for e in events[:-1])
    prompt_ids = [t["id"] for t in httpx2.post(f"{tgi_client.model}/tokenize", json={"inputs": PROMPT}).json()]
    assert [t.id for t in full.details.prefill] == prompt_ids
    assert full.details.prefill[0].logprob is None and all(t.logprob < 0 for t in full.details.prefill[1:])
    assert len(full.details.top_tokens) == 10 and all(len(top) == 2 for top in full.details.top_tokens)
    assert [top[0]["id"] for top in full.details.top_tokens] == [t.id for t in full.details.tokens]  # greedy


def test_stop_sequence_seed_and_full_text(tgi_client):
    reference = tgi_client.text_generation(PROMPT, max_new_tokens=10)
    stop = reference.split()[1]
    out = tgi_client.text_generation(PROMPT, max_new_tokens=10, stop=[stop], details=True)
    assert out.details.finish_reason == "stop_sequence" and out.generated_text.endswith(stop)
    full = tgi_client.text_generation(PROMPT, max_new_tokens=3, return_full_text=True)
    assert full.startswith(PROMPT) and len(full) > len(PROMPT)
    sampled = [tgi_client.text_generation(PROMPT, max_new_tokens=8, do_sample=True, temperature=0.9, seed=11,
                                          details=True) for _ in range(2)]
    assert sampled[0].generated_text == sampled[1].generated_text and sampled[0].details.seed == 11


def test_best_of_returns_the_best_and_the_others(tgi_client):
    out = tgi_client.text_generation(PROMPT, max_new_tokens=5, best_of=2, do_sample=True, details=True)
    best = sum(t.logprob for t in out.details.tokens)
    others = out.details.best_of_sequences
    assert len(others) == 1 and sum(t.logprob for t in others[0].tokens) <= best


def test_truncate_keeps_the_end_of_the_input(tgi_client):
    full = tgi_client.text_generation(PROMPT, max_new_tokens=4, details=True, decoder_input_details=True,
                                      truncate=3)
    assert len(full.details.prefill) == 3


def test_info_health_tokenize_metrics(served, tgi_client):
    info = httpx2.get(f"{served.url}/info").json()
    assert info["model_id"] == "smollm2" and info["max_total_tokens"] == 1024 and info["max_best_of"] >= 2
    assert httpx2.get(f"{served.url}/health").status_code == 200
    pieces = httpx2.post(f"{served.url}/tokenize", json={"inputs": "Hello world"}).json()
    assert "".join(p["text"] for p in pieces) == "Hello world" and pieces[-1]["stop"] == len("Hello world")
    tgi_client.text_generation(PROMPT, max_new_tokens=2)
    metrics = httpx2.get(f"{served.url}/metrics").text
    values = {line.split(" ")[0]: float(line.split(" ")[1]) for line in metrics.splitlines()
              if line and not line.startswith("#")}
    assert values['tokenmill_requests_total{outcome="success"}'] >= 1
    assert values["tokenmill_generated_tokens_total"] >= 2 and values["tokenmill_prompt_tokens_total"] >= 1
    assert values["tokenmill_time_to_first_token_seconds_count"] >= 1
    assert values["tokenmill_kv_blocks_total"] == 320
    for name in ("tokenmill_queue_length", "tokenmill_running_batch_size", "tokenmill_kv_blocks_used",
                 "tokenmill_prefix_cache_hit_rate", "tokenmill_preemptions", "tokenmill_inter_token_latency_seconds_count"):
        assert name in values


def test_client_sees_tgi_validation_errors(tgi_client):
    from huggingface_hub.errors import ValidationError

    with pytest.raises(ValidationError, match="`top_p` must be > 0.0 and < 1.0"):
        tgi_client.text_generation(PROMPT, max_new_tokens=3, top_p=1.5)
    with pytest.raises(ValidationError, match="must be <= 1024"):
        tgi_client.text_generation(PROMPT, max_new_tokens=5000)
