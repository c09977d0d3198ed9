"""The connection deadlines on real servers over loopback, with raw sockets. Headers: a request whose headers never
complete (sent in part, trickled, or never begun) loses its connection, while other connections are served, a
kept-alive connection may idle past the deadline, and a slow body is the request guards' to answer (408).
Writes: a client that reads none of an endless response loses its connection and the response's producer ends,
while a client that reads gets a response many times the buffers whole.

uvicorn speaks h11 here: make_server gives it the h11 protocol with the deadline whatever else is installed
(httptools is not a dependency, so the h11 protocol is the only one this tests)."""

import asyncio
import socket
import threading
import time

import h11
import httpx2
import pytest
import uvicorn
from starlette.responses import StreamingResponse

from tokenmill.server.runner import BoundedH11Protocol, bounded_protocol

HEADER_SECONDS = 0.5
BOUND_SECONDS = 30.0  # a generous bound on the wait for the close: the test asserts that it comes, not how fast


@pytest.fixture(scope="module")
def deadline_server(smollm2, server_factory):
    running = server_factory(*smollm2, header_timeout_seconds=HEADER_SECONDS, request_body_seconds=2.0)
    assert running.server.config.http.header_seconds == HEADER_SECONDS  # the settings reach the protocol
    yield running
    running.stop()


def _connect(served, receive_buffer: int | None = None) -> socket.socket:
    host, port = served.url.removeprefix("http://").split(":")
    sock = socket.socket()
    if receive_buffer is not None:  # set before connecting: it bounds the window the client offers
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.settimeout(BOUND_SECONDS)
    sock.connect((host, int(port)))
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


WRITE_SECONDS = 0.5
CHUNK = b"x" * 65536
LONG_RESPONSE_CHUNKS = 256  # 16 MiB: past the socket buffers and uvicorn's high-water mark many times over


class _Streams:
    """A plain app under the bounded protocol: /endless streams for ever, /long streams LONG_RESPONSE_CHUNKS
    chunks; `ended` is set when a stream's producer finishes or is closed."""

    def __init__(self):
        self.ended = threading.Event()

    async def __call__(self, scope, receive, send):
        count = None if scope["path"] == "/endless" else LONG_RESPONSE_CHUNKS
        await StreamingResponse(self._chunks(count))(scope, receive, send)

    async def _chunks(self, count):
        try:
            sent = 0
            while count is None or sent < count:
                yield CHUNK
                sent += 1
                await asyncio.sleep(0)
        finally:
            self.ended.set()


@pytest.fixture
def streams():
    app = _Streams()
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off",
                            http=bounded_protocol(10.0, WRITE_SECONDS))
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    app.url = f"http://127.0.0.1:{port}"
    yield app
    server.should_exit = True
    thread.join(30)


def test_a_client_that_reads_nothing_loses_its_connection_and_the_stream_ends(streams):
    with _connect(streams, receive_buffer=4096) as stalled:
        stalled.sendall(b"GET /endless HTTP/1.1\r\nHost: x\r\n\r\n")
        assert streams.ended.wait(BOUND_SECONDS)  # without the write deadline it never ends
        stalled.setblocking(False)
        with pytest.raises((ConnectionResetError, BrokenPipeError)):  # aborted: whatever was buffered is dropped
            for _ in range(10_000):
                if stalled.recv(1 << 20) == b"":
                    raise ConnectionResetError
                time.sleep(0.001)


def test_a_client_that_reads_gets_a_long_response_whole(streams):
    response = httpx2.get(f"{streams.url}/long", timeout=BOUND_SECONDS)
    assert response.status_code == 200 and len(response.content) == LONG_RESPONSE_CHUNKS * len(CHUNK)


@pytest.mark.parametrize("seconds", [0, -0.5, float("inf"), float("nan")])
def test_each_deadline_must_be_finite_and_positive(seconds):
    with pytest.raises(ValueError, match="header timeout"):
        bounded_protocol(seconds, 60)
    with pytest.raises(ValueError, match="write timeout"):
        bounded_protocol(10, seconds)


def test_each_pair_of_deadlines_is_its_own_protocol_class():
    short, long = bounded_protocol(0.5, 1), bounded_protocol(2, 30)
    assert issubclass(short, BoundedH11Protocol) and (short.header_seconds, short.write_seconds) == (0.5, 1.0)
    assert (long.header_seconds, long.write_seconds) == (2.0, 30.0)
    assert (BoundedH11Protocol.header_seconds, BoundedH11Protocol.write_seconds) == (10.0, 60.0)


def test_connections_past_the_cap_are_closed_as_they_open_and_the_cap_frees(smollm2, server_factory):
    # a header deadline past the wait bound: only the cap can close the idle connections here
    running = server_factory(*smollm2, max_connections=2, header_timeout_seconds=4 * BOUND_SECONDS)
    try:
        first, second = _connect(running), _connect(running)
        with first, second:
            with _connect(running) as third:
                assert _closed_by_server(third)  # the third is closed at once, with nothing sent
            first.close()
            for _ in range(int(BOUND_SECONDS / 0.05)):  # the server notices the close on its next loop turn
                with _connect(running) as fresh:
                    fresh.sendall(b"GET /version HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    try:
                        status, _ = _response(fresh)
                    except (ConnectionResetError, h11.RemoteProtocolError):
                        status = None
                if status is not None:
                    break
                time.sleep(0.05)
            assert status == 200  # a slot freed by a closed connection serves the next one
    finally:
        running.stop()


def test_the_connection_cap_is_a_whole_number_of_at_least_one():
    from tokenmill.server.settings import ServerSettings

    for bad in (0, -3, 1.5, True):
        with pytest.raises(ValueError, match="max_connections"):
            ServerSettings(max_connections=bad)
