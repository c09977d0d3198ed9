"""A server over two engine replica processes (1 thread each): the openai SDK sees the same greedy answers as
with one engine, requests spread over both replicas, a shared prefix stays on one, and a killed replica fails
only its own requests, shows in /metrics and /health, and is restarted."""

import os
import signal
import threading
import time
from types import SimpleNamespace

import httpx2 as httpx
import pytest

from tokenmill.engine.engine import EngineConfig
from tokenmill.engine.replica_worker import ReplicaSpec
from tokenmill.server.replica_app import build_replica_app
from tokenmill.server.runner import make_server
from tokenmill.server.settings import ServerSettings

MODEL_NAME = "smollm2"  # as served by conftest.py, whose single-engine server is the reference

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def replicated(smollm2_gguf, smollm2):
    spec = ReplicaSpec(str(smollm2_gguf), engine_config=EngineConfig(num_blocks=640, block_size=16, max_num_seqs=48),
                       threads=1)
    app = build_replica_app(spec, 2, smollm2[1], ServerSettings(model_name=MODEL_NAME, default_max_tokens=16,
                                                                max_total_tokens=1024))
    server = make_server(app, "127.0.0.1", 0, log_level="warning", drain_timeout=60)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        assert thread.is_alive(), "the replicated server did not start"
        time.sleep(0.02)
    yield SimpleNamespace(url=f"http://127.0.0.1:{server.port}", state=app.state.tokenmill)
    server.should_exit = True
    thread.join(30)
    app.state.tokenmill.engine.shutdown()


@pytest.fixture
def dp_client(replicated):
    import openai

    return openai.OpenAI(base_url=f"{replicated.url}/v1", api_key="unused", max_retries=0, timeout=120)


def replicas(served):
    return served.state.engine.replicas


def test_greedy_answers_equal_one_engine(dp_client, openai_client):
    for client in (dp_client, openai_client):
        chat = client.chat.completions.create(model=MODEL_NAME, messages=QUESTION, max_tokens=12, temperature=0)
        stream = client.chat.completions.create(model=MODEL_NAME, messages=QUESTION, max_tokens=12, temperature=0,
                                                stream=True)
        streamed = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        completion = client.completions.create(model=MODEL_NAME, prompt="1, 2, 3, 4,", max_tokens=8, temperature=0,
                                               logprobs=2, n=2, stop=["7"])
        if client is dp_client:
            replicated = (chat.choices[0].message.content, streamed, completion)
        else:
            single = (chat.choices[0].message.content, streamed, completion)
    assert replicated[0] == single[0] == replicated[1] and "Paris" in single[0]
    for ours, theirs in zip(replicated[2].choices, single[2].choices):
        assert ours.text == theirs.text and ours.finish_reason == theirs.finish_reason
        assert ours.logprobs.tokens == theirs.logprobs.tokens


@pytest.fixture
def routed(replicated):
    """The replica of every request the server opens during the test, in order."""
    engine = replicated.state.engine
    original, chosen = engine._open, []

    def recording(request_id, prompt, params):
        stream = original(request_id, prompt, params)
        chosen.append(stream.replica)
        return stream

    engine._open = recording
    yield chosen
    del engine._open


def test_concurrent_requests_spread_over_both(dp_client, routed):
    threads = [threading.Thread(target=dp_client.completions.create,
                                kwargs=dict(model=MODEL_NAME, prompt=f"{i} apples and {i} pears make",
                                            max_tokens=6, temperature=0)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(routed) == 4 and set(routed) == {0, 1}


def test_shared_prefix_goes_to_the_same_replica(dp_client, routed):
    system = "You are a careful assistant who answers questions about geography in one short sentence. " * 2
    for city in ("Paris", "Rome", "Berlin", "Madrid"):
        messages = [{"role": "system", "content": system}, {"role": "user", "content": f"Where is {city}?"}]
        dp_client.chat.completions.create(model=MODEL_NAME, messages=messages, max_tokens=2, temperature=0)
    for word in ("Paris", "Rome"):  # prompts under one KV block share nothing: taken in turn
        dp_client.completions.create(model=MODEL_NAME, prompt=word, max_tokens=1, temperature=0)
    assert len(set(routed[:4])) == 1 and routed[4] != routed[5]


def test_client_disconnect_aborts_on_the_replica(replicated):
    engine = replicated.state.engine
    sent = []
    originals = [replica.send for replica in engine.replicas]
    for replica, original in zip(engine.replicas, originals):
        replica.send = lambda message, index=replica.index, original=original: (sent.append((index, message)),
                                                                                original(message))
    try:
        with httpx.stream("POST", f"{replicated.url}/v1/completions", timeout=60,
                          json={"model": MODEL_NAME, "prompt": "Count to one thousand:", "max_tokens": 400,
                                "temperature": 0, "stream": True, "ignore_eos": True}) as response:
            next(response.iter_lines())
        deadline = time.monotonic() + 20
        while not any(message[0] == "abort" for _, message in sent):
            assert time.monotonic() < deadline, "the disconnect was not passed on to the replica"
            time.sleep(0.05)
    finally:
        for replica in engine.replicas:
            del replica.send
    (added,) = [(index, message[1]) for index, message in sent if message[0] == "add"]
    assert [(index, message[1]) for index, message in sent if message[0] == "abort"] == [added]
    deadline = time.monotonic() + 20
    while engine.router.loads != [0, 0] or engine.num_in_flight:
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_killed_replica_is_reported_restarted_and_spares_the_other(replicated, dp_client, openai_client):
    expected = openai_client.completions.create(model=MODEL_NAME, prompt="Once upon a time", max_tokens=24,
                                                temperature=0, stop=None).choices[0].text
    engine = replicated.state.engine
    victim_stream = dp_client.completions.create(model=MODEL_NAME, prompt="Tell me a long story about a dragon",
                                                 max_tokens=200, temperature=0, stream=True)
    next(iter(victim_stream))
    (victim,) = {s.replica for s in engine._streams.values()}
    survivor = dp_client.completions.create(model=MODEL_NAME, prompt="Once upon a time", max_tokens=24,
                                            temperature=0, stream=True)
    chunks = iter(survivor)
    first = next(chunks)
    assert {s.replica for s in engine._streams.values()} == {0, 1}
    os.kill(replicas(replicated)[victim].process.pid, signal.SIGKILL)
    with pytest.raises(Exception, match=f"replica {victim} stopped"):
        for _ in victim_stream:
            pass
    assert first.choices[0].text + "".join(c.choices[0].text for c in chunks) == expected
    metrics = httpx.get(f"{replicated.url}/metrics").text
    assert f'tokenmill_replica_deaths_total{{replica="{victim}"}} 1.0' in metrics
    deadline = time.monotonic() + 60
    while replicas(replicated)[victim].state != "up":
        assert time.monotonic() < deadline, "the killed replica was not restarted"
        time.sleep(0.1)
    metrics = httpx.get(f"{replicated.url}/metrics").text
    assert f'tokenmill_replica_restarts_total{{replica="{victim}"}} 1.0' in metrics
    assert f'tokenmill_replica_up{{replica="{victim}"}} 1.0' in metrics
    assert httpx.get(f"{replicated.url}/health").status_code == 200
    answer = dp_client.completions.create(model=MODEL_NAME, prompt="Once upon a time", max_tokens=24, temperature=0)
    assert answer.choices[0].text == expected


def test_metrics_sum_the_replicas(replicated, dp_client):
    dp_client.completions.create(model=MODEL_NAME, prompt="Hello", max_tokens=2, temperature=0)
    metrics = httpx.get(f"{replicated.url}/metrics").text
    info = replicated.state.engine.model_info()
    assert info.kv_blocks == 2 * 320
    assert f"tokenmill_kv_blocks_total {float(info.kv_blocks)}" in metrics
    assert 'tokenmill_replica_sequences_in_flight{replica="1"}' in metrics
