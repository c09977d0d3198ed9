"""/tokenize: linear in its input, off the event loop, admitted and bounded like a prompt; /detokenize bounded in
its ids' count and range, admitted and off the event loop the same way; the prompt work of the generation routes
(templates, tokenizing, grammars) off the event loop too."""

import threading
import time

import httpx2
import pytest

from tokenmill.server.tgi_routes import _token_spans

SLOW_SECONDS = 1.5


class _State:
    def __init__(self, tokenizer, max_input_tokens):
        self.tokenizer, self.max_input_tokens = tokenizer, max_input_tokens


def test_spans_are_linear_in_the_input(smollm2):
    tokenizer = smollm2[1]
    text = "word " * 64000
    started = time.perf_counter()
    spans = _token_spans(_State(tokenizer, 10**6), text)
    elapsed = time.perf_counter() - started
    assert len(spans) == 64001 and spans[-1]["stop"] == len(text)
    # a quadratic span computation took 37.8 s at 16k tokens; linear work here is well under a second
    assert elapsed < 5, elapsed


def test_spans_cover_the_text_they_name(served):
    text = "Hello wörld 😀!"
    spans = httpx2.post(f"{served.url}/tokenize", json={"inputs": text}, timeout=30).json()
    assert all(span["text"] == text[span["start"]:span["stop"]] for span in spans)
    assert [span["id"] for span in spans] == list(served.state.tokenizer.encode(text))


def test_an_input_past_the_prompt_limit_is_refused(served):
    response = httpx2.post(f"{served.url}/tokenize", json={"inputs": "word " * 2000}, timeout=30)
    assert response.status_code == 422
    assert "more than the limit of 1023 input tokens" in response.json()["error"]


def test_it_is_admitted_like_a_generation_request(served, monkeypatch):
    monkeypatch.setattr(served.state.settings, "max_concurrent_requests", 0)
    response = httpx2.post(f"{served.url}/tokenize", json={"inputs": "hi"}, timeout=30)
    assert response.status_code == 429 and response.json()["error_type"] == "overloaded"


def test_detokenize_refuses_more_ids_than_the_longest_sequence(served):
    limit = served.state.max_total_tokens
    assert httpx2.post(f"{served.url}/detokenize", json={"tokens": [1] * limit}, timeout=30).status_code == 200
    response = httpx2.post(f"{served.url}/detokenize", json={"tokens": [1] * (limit + 1)}, timeout=30)
    assert response.status_code == 422
    assert response.json() == {"error": f"the request has {limit + 1} token ids, more than the limit of {limit} "
                                        "(the longest sequence this server makes)", "error_type": "validation"}


@pytest.mark.parametrize("token_id", [-1, "vocab", 2**64, -(2**70)])
def test_detokenize_refuses_ids_outside_the_vocabulary(served, token_id):
    vocab_size = served.state.vocab_size
    token_id = vocab_size if token_id == "vocab" else token_id
    response = httpx2.post(f"{served.url}/detokenize", json={"tokens": [1, token_id]}, timeout=30)
    assert response.status_code == 422, response.text
    error = response.json()
    assert error["error_type"] == "validation" and "outside the vocabulary" in error["error"], error


def test_detokenize_is_admitted_like_a_generation_request(served, monkeypatch):
    monkeypatch.setattr(served.state.settings, "max_concurrent_requests", 0)
    response = httpx2.post(f"{served.url}/detokenize", json={"tokens": [1]}, timeout=30)
    assert response.status_code == 429 and response.json()["error_type"] == "overloaded"
    monkeypatch.undo()
    assert served.state.in_flight == 0  # the refused request holds no slot


class _SlowTokenizer:
    """The real tokenizer, each encode and template render taking SLOW_SECONDS of blocking work."""

    def __init__(self, tokenizer):
        self._tokenizer = tokenizer

    def __getattr__(self, name):
        return getattr(self._tokenizer, name)

    def __call__(self, *args, **kwargs):
        time.sleep(SLOW_SECONDS)
        return self._tokenizer(*args, **kwargs)

    def encode(self, *args, **kwargs):
        time.sleep(SLOW_SECONDS)
        return self._tokenizer.encode(*args, **kwargs)

    def decode(self, *args, **kwargs):
        time.sleep(SLOW_SECONDS)
        return self._tokenizer.decode(*args, **kwargs)

    def apply_chat_template(self, *args, **kwargs):
        time.sleep(SLOW_SECONDS)
        return self._tokenizer.apply_chat_template(*args, **kwargs)


@pytest.mark.parametrize("path, body", [
    ("/tokenize", {"inputs": "hi"}),
    ("/detokenize", {"tokens": [1, 2]}),
    ("/generate", {"inputs": "hi", "parameters": {"max_new_tokens": 1}}),
    ("/v1/completions", {"prompt": "hi", "max_tokens": 1}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}),
    ("/v1/messages", {"model": "smollm2", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}),
    ("/v1/responses", {"input": "hi", "max_output_tokens": 1}),
])
def test_prompt_work_leaves_the_event_loop_free(served, monkeypatch, path, body):
    slow = _SlowTokenizer(served.state.tokenizer)
    monkeypatch.setattr(type(served.state), "tokenizer", property(lambda state: slow))
    answers = {}
    worker = threading.Thread(target=lambda: answers.update(
        response=httpx2.post(f"{served.url}{path}", json=body, timeout=60)))
    worker.start()
    time.sleep(0.3)  # the slow request is in its tokenizer now
    started = time.perf_counter()
    assert httpx2.get(f"{served.url}/health", timeout=30).status_code == 200
    health_seconds = time.perf_counter() - started
    worker.join(60)
    assert answers["response"].status_code == 200, answers["response"].text
    assert health_seconds < SLOW_SECONDS / 2, health_seconds
