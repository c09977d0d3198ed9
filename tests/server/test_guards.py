"""Before routing: the API key on every path but the open ones, the body limit however the body arrives; after:
an unexpected failure is a JSON 500 in the API's shape and the kept-alive connection still serves."""

import socket
import time

import httpx2
import pytest

from tokenmill.server.guards import OPEN_PATHS, has_api_key, needs_api_key

KEY = "sekret"


def _chunked_upload(port: int, total_bytes: int, chunk_bytes: int = 1 << 16) -> tuple[int, bytes]:
    """POST /generate a chunked body (no Content-Length) of `total_bytes`, stopping when the server answers or
    closes; (bytes sent, what the server answered)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(b"POST /generate HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
                 b"Transfer-Encoding: chunked\r\n\r\n")
    frame = b"%x\r\n" % chunk_bytes + b"x" * chunk_bytes + b"\r\n"
    sent = 0
    try:
        while sent < total_bytes:
            sock.sendall(frame)
            sent += chunk_bytes
        sock.sendall(b"0\r\n\r\n")
    except OSError:  # the server answered and closed without reading the rest: what it should do
        pass
    answer = b""
    try:
        while chunk := sock.recv(1 << 16):
            answer += chunk
    except OSError:
        pass
    sock.close()
    return sent, answer


def test_a_chunked_body_past_the_limit_is_refused_while_it_arrives(served):
    total = 64 << 20
    started = time.monotonic()
    sent, answer = _chunked_upload(served.server.port, total)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b'"error_type":"validation"' in answer and b"more than the limit of 1048576 bytes" in answer
    assert b"connection: close" in answer.lower()
    assert sent < total and time.monotonic() - started < 10  # the server stopped reading: not 64 MiB later
    assert httpx2.get(f"{served.url}/health", timeout=10).status_code == 200


def test_a_chunked_body_under_the_limit_is_served(served):
    pieces = [b'{"inputs": "Hello', b'", "parameters": ', b'{"max_new_tokens": 2}}']
    response = httpx2.post(f"{served.url}/generate", content=iter(pieces), timeout=60,
                           headers={"content-type": "application/json"})
    assert "content-length" not in response.request.headers and response.status_code == 200, response.text


def test_a_body_trickling_past_its_deadline_is_408(smollm2, server_factory):
    running = server_factory(*smollm2, request_body_seconds=1.0)
    try:
        sock = socket.create_connection(("127.0.0.1", running.server.port), timeout=30)
        sock.sendall(b"POST /generate HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100\r\n\r\n{\"inputs\"")
        started = time.monotonic()
        answer = b""
        while chunk := sock.recv(1 << 16):  # the server closes after its answer
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 408") and b"did not arrive within 1 s" in answer, answer
        assert time.monotonic() - started < 10
        sock.close()
    finally:
        running.stop()


def test_the_bearer_scheme_is_case_insensitive_and_the_key_exact():
    assert has_api_key(f"Bearer {KEY}", KEY) and has_api_key(f"bearer {KEY}", KEY)
    assert has_api_key(f"BEARER  {KEY} ", KEY)
    assert not has_api_key(f"Bearer {KEY}x", KEY) and not has_api_key(KEY, KEY)
    assert not has_api_key(f"Basic {KEY}", KEY) and not has_api_key("", KEY)
    assert not has_api_key(f"Bearer {KEY.upper()}", KEY)


def test_only_probes_scrapers_the_api_description_and_the_chat_page_are_open():
    assert not any(needs_api_key("GET", path) for path in ("/health", "/metrics", "/info", "/version",
                                                           "/openapi.json", "/", "/static/chat.js"))
    assert all(needs_api_key("POST", path) for path in ("/tokenize", "/detokenize", "/generate", "/",
                                                        "/v1/chat/completions", "/nowhere", "/static/chat.js"))
    assert needs_api_key("GET", "/v1/models") and needs_api_key("GET", "/nowhere")
    assert "/tokenize" not in OPEN_PATHS


@pytest.fixture(scope="module")
def keyed(smollm2, server_factory):
    running = server_factory(*smollm2, api_key=KEY)
    yield running
    running.stop()


@pytest.mark.parametrize("method, path, body", [
    ("POST", "/tokenize", {"inputs": "hi"}), ("POST", "/detokenize", {"tokens": [1]}), ("GET", "/v1/models", None),
    ("POST", "/generate", {"inputs": "hi", "parameters": {"max_new_tokens": 1}}),
])
def test_every_route_but_the_open_ones_needs_the_key(keyed, method, path, body):
    refused = httpx2.request(method, f"{keyed.url}{path}", json=body, timeout=60)
    assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
    served = httpx2.request(method, f"{keyed.url}{path}", json=body, timeout=60,
                            headers={"Authorization": f"bearer {KEY}"})
    assert served.status_code == 200, served.text


def test_open_paths_need_no_key(keyed):
    for path in ("/health", "/metrics", "/info", "/version", "/openapi.json"):
        assert httpx2.get(f"{keyed.url}{path}", timeout=10).status_code == 200, path


@pytest.mark.parametrize("path, shape", [("/info", "tgi"), ("/v1/models", "openai")])
def test_an_unexpected_failure_is_a_json_500_and_the_connection_lives_on(served, monkeypatch, path, shape):
    def broken(*args, **kwargs):
        raise RuntimeError("simulated bug")

    monkeypatch.setattr(served.state.engine, "model_info", broken)
    monkeypatch.setattr(type(served.state), "max_total_tokens", property(broken))
    with httpx2.Client(base_url=served.url, timeout=30) as client:
        response = client.get(path)
        assert response.status_code == 500 and response.headers["content-type"] == "application/json"
        error = response.json()
        message = error["error"]["message"] if shape == "openai" else error["error"]
        assert "RuntimeError" in message and (shape == "openai" or error["error_type"] == "generation")
        monkeypatch.undo()
        assert client.get("/version").status_code == 200  # the same kept-alive connection
