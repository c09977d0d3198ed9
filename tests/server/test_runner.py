"""The header deadline on a real server over loopback, with raw sockets: a request whose headers never complete
(sent in part, trickled, or never begun) loses its connection, while other connections are served, a kept-alive
connection may idle past the deadline, and a slow body is the request guards' to answer (408).

uvicorn speaks h11 here: make_server gives it the h11 protocol with the deadline whatever else is installed
(httptools is not a dependency, so the h11 protocol is the only one this tests)."""

import socket
import time

import h11
import httpx2
import pytest

from tokenmill.server.runner import HeaderDeadlineProtocol, header_deadline_protocol

HEADER_SECONDS = 0.5
BOUND_SECONDS = 30.0  # a generous bound on the wait for the close: the test asserts that it comes, not how fast


@pytest.fixture(scope="module")
def deadline_server(smollm2, server_factory):
    running = server_factory(*smollm2, header_timeout_seconds=HEADER_SECONDS, request_body_seconds=2.0)
    yield running
    running.stop()


def _connect(served) -> socket.socket:
    host, port = served.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=BOUND_SECONDS)
    return sock


def _closed_by_server(sock: socket.socket) -> bool:
    """True once the server closes the connection (EOF or reset) within BOUND_SECONDS; False if it answers
    anything or the bound passes."""
    try:
        return sock.recv(65536) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def _response(sock: socket.socket) -> tuple[int, bytes]:
    """The status and body of the next response read from `sock`."""
    client = h11.Connection(h11.CLIENT)
    client.send(h11.Request(method="GET", target="/", headers=[("Host", "x")]))  # only to put h11 in its state
    client.send(h11.EndOfMessage())
    status, body = None, b""
    while True:
        event = client.next_event()
        if event is h11.NEED_DATA:
            client.receive_data(sock.recv(65536))
        elif isinstance(event, h11.Response):
            status = event.status_code
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
            return status, body


def test_half_sent_headers_lose_their_connection_while_others_are_served(deadline_server):
    with _connect(deadline_server) as slow:
        slow.sendall(b"GET /version HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
        assert httpx2.get(f"{deadline_server.url}/version", timeout=BOUND_SECONDS).status_code == 200
        assert _closed_by_server(slow)


def test_a_connection_that_sends_nothing_is_closed(deadline_server):
    with _connect(deadline_server) as silent:
        assert _closed_by_server(silent)


def test_trickled_headers_are_bounded_in_total_not_per_byte(deadline_server):
    with _connect(deadline_server) as trickle:
        trickle.sendall(b"GET /version HTTP/1.1\r\nHost: x\r\nX-Pad: ")
        trickle.settimeout(0.05)
        closed = False
        for _ in range(int(BOUND_SECONDS / 0.05)):  # a byte every ~50 ms: well inside the deadline each time
            try:
                trickle.sendall(b"a")
                closed = trickle.recv(1) == b""
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                closed = True
            if closed:
                break
        assert closed


def test_a_kept_alive_connection_idles_past_the_header_deadline(deadline_server):
    with _connect(deadline_server) as kept:
        kept.sendall(b"GET /version HTTP/1.1\r\nHost: x\r\n\r\n")
        assert _response(kept)[0] == 200
        time.sleep(3 * HEADER_SECONDS)  # idle: uvicorn's keep-alive timeout (5 s) governs, not the deadline
        kept.sendall(b"GET /version HTTP/1.1\r\nHost: x\r\n\r\n")
        assert _response(kept)[0] == 200


def test_the_next_request_on_a_kept_alive_connection_has_its_own_deadline(deadline_server):
    with _connect(deadline_server) as kept:
        kept.sendall(b"GET /version HTTP/1.1\r\nHost: x\r\n\r\n")
        assert _response(kept)[0] == 200
        kept.sendall(b"GET /version HTTP/1.1\r\nHost: x\r\n")
        assert _closed_by_server(kept)


def test_a_slow_body_after_complete_headers_is_answered_by_the_body_limit(deadline_server):
    with _connect(deadline_server) as slow_body:
        slow_body.sendall(b"POST /tokenize HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                          b"Content-Length: 20\r\n\r\n{\"inp")  # then nothing: 15 bytes never come
        status, body = _response(slow_body)
        assert status == 408 and b"did not arrive within 2 s" in body


@pytest.mark.parametrize("seconds", [0, -0.5, float("inf"), float("nan")])
def test_the_deadline_must_be_finite_and_positive(seconds):
    with pytest.raises(ValueError, match="header timeout"):
        header_deadline_protocol(seconds)


def test_each_deadline_is_its_own_protocol_class():
    half, two = header_deadline_protocol(0.5), header_deadline_protocol(2)
    assert issubclass(half, HeaderDeadlineProtocol) and (half.header_seconds, two.header_seconds) == (0.5, 2.0)
    assert HeaderDeadlineProtocol.header_seconds == 10.0
