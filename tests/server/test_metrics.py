"""/metrics: the pool size from the start, and the requests (and sequences) in flight at each scrape."""

import threading
import time

import httpx2


def _values(url):
    text = httpx2.get(f"{url}/metrics").text
    return {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines()
            if line and not line.startswith("#")}


def test_kv_total_before_the_first_step_and_in_flight_gauges(tiny_chat, server_factory):
    running = server_factory(*tiny_chat)
    try:
        fresh = _values(running.url)
        assert fresh["tokenmill_kv_blocks_total"] == 320  # known before any step
        assert fresh["tokenmill_requests_in_flight"] == 0 and fresh["tokenmill_sequences_in_flight"] == 0
        ready, done = threading.Event(), threading.Event()
        body = {"model": "smollm2", "prompt": "hello", "n": 2, "max_tokens": 400, "ignore_eos": True, "stream": True}

        def hold():
            with httpx2.Client(timeout=60) as client:
                with client.stream("POST", f"{running.url}/v1/completions", json=body) as response:
                    for line in response.iter_lines():
                        if line.startswith("data:"):
                            ready.set()
                            done.wait(30)
                            return

        holder = threading.Thread(target=hold)
        holder.start()
        try:
            assert ready.wait(60)
            busy = _values(running.url)
            assert busy["tokenmill_requests_in_flight"] == 1 and busy["tokenmill_sequences_in_flight"] == 2
        finally:
            done.set()
            holder.join(60)
        deadline = time.monotonic() + 30
        while _values(running.url)["tokenmill_requests_in_flight"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _values(running.url)["tokenmill_requests_in_flight"] == 0
    finally:
        running.stop()
