"""Run the app under uvicorn with a graceful drain (on SIGTERM/SIGINT new requests get 503 while running ones
finish, then the server exits), over an h11 protocol that bounds the time a request's headers may take to arrive
and a response may wait for a client that reads nothing."""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from .state import ServerState

logger = logging.getLogger("tokenmill.server")


class BoundedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol where no connection is held open by a client that stops half-way:
    - its request headers must be complete `header_seconds` after the connection opened (its first request) or
      after a kept-alive connection's first new byte (the next one), however slowly they trickle in;
    - a response may wait at most `write_seconds` at a stretch for a client that reads none of it (writing
      paused at uvicorn's high-water mark), so a stalled reader cannot keep its request admitted for ever.
    Past either the connection is closed (a dropped client's request is aborted, as on any disconnect). The wait
    between requests on a kept-alive connection stays uvicorn's timeout_keep_alive, and a body's arrival is
    bounded by the request guards (--request-body-seconds). A connection beyond `max_connections` open at once
    is closed as it opens: a flood of connections cannot take every file descriptor from the ones being served."""

    header_seconds = 10.0
    write_seconds = 60.0
    max_connections = 1000

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._header_deadline: asyncio.TimerHandle | None = None
        self._write_deadline: asyncio.TimerHandle | None = None
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:  # uvicorn counts this one already
            logger.warning("closing a new connection: %d are open (--max-connections)", self.max_connections)
            transport.close()
            return
        self._header_deadline = self.loop.call_later(self.header_seconds, self._headers_too_late)

    def data_received(self, data: bytes) -> None:
        if self._header_deadline is None and self._awaiting_headers():  # the next request's first bytes
            self._header_deadline = self.loop.call_later(self.header_seconds, self._headers_too_late)
        super().data_received(data)
        if not self._awaiting_headers():
            self._header_deadline = _cancelled(self._header_deadline)

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._write_deadline is None:
            self._write_deadline = self.loop.call_later(self.write_seconds, self._reader_stalled)

    def resume_writing(self) -> None:
        super().resume_writing()
        self._write_deadline = _cancelled(self._write_deadline)

    def connection_lost(self, exc: Exception | None) -> None:
        self._header_deadline = _cancelled(self._header_deadline)
        self._write_deadline = _cancelled(self._write_deadline)
        super().connection_lost(exc)

    def _awaiting_headers(self) -> bool:
        return self.conn.their_state is h11.IDLE  # h11 leaves IDLE once a request's headers are parsed

    def _headers_too_late(self) -> None:
        self._header_deadline = None
        if self._awaiting_headers() and not self.transport.is_closing():
            logger.info("closing a connection whose request headers did not arrive within %g s", self.header_seconds)
            self.transport.close()

    def _reader_stalled(self) -> None:
        self._write_deadline = None
        if not self.transport.is_closing():
            logger.info("closing a connection whose client read none of its response for %g s", self.write_seconds)
            self.transport.abort()  # close() would wait to flush what the client is not reading


def _cancelled(timer: asyncio.TimerHandle | None) -> None:
    if timer is not None:
        timer.cancel()


def bounded_protocol(header_seconds: float, write_seconds: float,
                     max_connections: int = BoundedH11Protocol.max_connections) -> type[BoundedH11Protocol]:
    """The protocol class uvicorn's Config takes as `http`, with these deadlines (each refused unless > 0) and
    this many connections at most."""
    for name, seconds in (("header timeout", header_seconds), ("write timeout", write_seconds)):
        if not (math.isfinite(seconds) and seconds > 0):
            raise ValueError(f"the {name} must be a finite number of seconds more than 0, got {seconds!r}")
    return type("BoundedH11Protocol", (BoundedH11Protocol,),
                {"header_seconds": float(header_seconds), "write_seconds": float(write_seconds),
                 "max_connections": int(max_connections)})


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, state: ServerState, drain_timeout: float = 600.0):
        super().__init__(config)
        self.state = state
        self.drain_timeout = drain_timeout
        self._drain_thread: threading.Thread | None = None

    def handle_exit(self, sig, frame) -> None:
        if self.state.draining:  # a second signal: stop now
            super().handle_exit(sig, frame)
            return
        self.state.draining = True
        self._drain_thread = threading.Thread(target=self._exit_when_idle, args=(sig, frame), daemon=True)
        self._drain_thread.start()

    def _exit_when_idle(self, sig, frame) -> None:
        deadline = time.monotonic() + self.drain_timeout
        # a dead or stuck engine finishes nothing: waiting for it would keep SIGTERM from ever completing
        while self.state.in_flight > 0 and time.monotonic() < deadline and self.state.engine.health().ok:
            time.sleep(0.05)
        if self.state.in_flight > 0:  # the requests left can no longer finish: answer them rather than hang
            self.state.engine.fail_waiting("the server is shutting down before this request could finish")
        self.should_exit = True

    @property
    def port(self) -> int | None:
        """The bound port (useful with port 0), once started."""
        for server in getattr(self, "servers", []) or []:
            for sock in server.sockets:
                return sock.getsockname()[1]
        return None


def make_server(app, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info",
                drain_timeout: float = 600.0) -> DrainingServer:
    """`app`'s server; every connection speaks h11 under the header and write deadlines of the app's settings."""
    settings = app.state.tokenmill.settings
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=drain_timeout,
                            http=bounded_protocol(settings.header_timeout_seconds, settings.write_timeout_seconds,
                                                  settings.max_connections))
    return DrainingServer(config, app.state.tokenmill, drain_timeout)
