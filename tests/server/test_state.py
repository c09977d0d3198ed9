"""Admission: counted in sequences (prompts x n), capped per request, refused while the engine is dead or stuck."""

import signal
import threading
import time

import httpx2
import pytest

CHAT = "/v1/chat/completions"
MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.fixture
def tiny_server(tiny_chat, server_factory):
    started = []

    def start(**settings):
        started.append(server_factory(*tiny_chat, **settings))
        return started[-1]

    yield start
    for running in started:
        running.stop()


def _stream_until_first_chunk(url, body, ready: threading.Event, done: threading.Event):
    with httpx2.Client(timeout=60) as client:
        with client.stream("POST", f"{url}/v1/completions", json=body) as response:
            for line in response.iter_lines():
                if line.startswith("data:"):
                    ready.set()
                    done.wait(30)
                    return


def test_admission_counts_sequences_not_requests(tiny_server):
    """Issue 18: one request of many sequences ran under one admission slot and starved the others."""
    running = tiny_server(max_concurrent_requests=8, max_sequences_per_request=8)
    url, ready, done = running.url, threading.Event(), threading.Event()
    body = {"model": "smollm2", "prompt": ["a b", "c d"], "n": 3, "max_tokens": 400, "ignore_eos": True,
            "stream": True}
    holder = threading.Thread(target=_stream_until_first_chunk, args=(url, body, ready, done))
    holder.start()
    try:
        assert ready.wait(60)
        assert running.state.in_flight == 1 and running.state.in_flight_sequences == 6
        three = httpx2.post(f"{url}{CHAT}", json={"messages": MESSAGES, "n": 3, "max_tokens": 2}, timeout=60)
        assert three.status_code == 429 and "limit 8" in three.json()["error"]["message"]
        two = httpx2.post(f"{url}{CHAT}", json={"messages": MESSAGES, "n": 2, "max_tokens": 2}, timeout=60)
        assert two.status_code == 200
        nine = httpx2.post(f"{url}/v1/completions", json={"prompt": ["x"] * 3, "n": 3, "max_tokens": 2}, timeout=60)
        assert nine.status_code == 400 and "asks for 9 sequences" in nine.json()["error"]["message"]
    finally:
        done.set()
        holder.join(60)
    deadline = time.monotonic() + 30
    while running.state.in_flight and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (running.state.in_flight, running.state.in_flight_sequences) == (0, 0)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the death it simulates
def test_a_dead_engine_makes_health_and_admission_503_and_sigterm_completes(tiny_server, monkeypatch):
    running = tiny_server()
    engine = running.state.engine
    assert httpx2.get(f"{running.url}/health").status_code == 200

    def die():
        raise SystemExit("simulated death of the engine thread")

    monkeypatch.setattr(engine.engine, "step", die)
    waiting = httpx2.post(f"{running.url}/generate", json={"inputs": "hi", "parameters": {"max_new_tokens": 2}},
                          timeout=60)
    assert waiting.status_code == 503 and "engine" in waiting.json()["error"]  # failed, not left hanging
    health = httpx2.get(f"{running.url}/health")
    assert health.status_code == 503 and "not running" in health.json()["error"]
    refused = httpx2.post(f"{running.url}{CHAT}", json={"messages": MESSAGES, "max_tokens": 2}, timeout=60)
    assert refused.status_code == 503 and refused.json()["error"]["type"] == "service_unavailable"
    assert running.state.in_flight == 0
    running.server.handle_exit(signal.SIGTERM, None)
    running.thread.join(30)
    assert not running.thread.is_alive()


def test_a_stuck_engine_is_unhealthy_and_sigterm_does_not_wait_for_it(tiny_server, monkeypatch):
    running = tiny_server(engine_stall_seconds=0.3)
    engine = running.state.engine
    release = threading.Event()
    step = engine.engine.step

    def stuck():
        release.wait(60)
        return step()

    monkeypatch.setattr(engine.engine, "step", stuck)
    body = {"model": "smollm2", "prompt": "hi", "max_tokens": 2}
    caller = threading.Thread(target=lambda: httpx2.post(f"{running.url}/v1/completions", json=body, timeout=60))
    caller.start()
    try:
        deadline = time.monotonic() + 30
        while httpx2.get(f"{running.url}/health").status_code == 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        health = httpx2.get(f"{running.url}/health")
        assert health.status_code == 503 and "in one step" in health.json()["error"]
        assert running.state.in_flight == 1
        running.server.handle_exit(signal.SIGTERM, None)
        running.thread.join(30)
        assert not running.thread.is_alive()  # drained: a stuck engine finishes nothing, so it was not awaited
    finally:
        release.set()
        caller.join(60)
