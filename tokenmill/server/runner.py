"""Run the app under uvicorn with a graceful drain (on SIGTERM/SIGINT new requests get 503 while running ones
finish, then the server exits) and a bound on the time a request's headers may take to arrive."""

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


class HeaderDeadlineProtocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline on each request's headers: `header_seconds` from the connection's
    opening (its first request) or from a kept-alive connection's first new byte (the next one); a connection
    whose headers are not complete by then is closed, however slowly its bytes trickle in. The wait between
    requests on a kept-alive connection stays uvicorn's timeout_keep_alive, and a body's arrival is bounded by
    the request guards (--request-body-seconds)."""

    header_seconds = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._header_deadline: asyncio.TimerHandle | None = None
        super().connection_made(transport)
        self._start_deadline()

    def data_received(self, data: bytes) -> None:
        if self._header_deadline is None and self._awaiting_headers():
            self._start_deadline()  # the first bytes of the next request on a kept-alive connection
        super().data_received(data)
        if not self._awaiting_headers():
            self._cancel_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_deadline()
        super().connection_lost(exc)

    def _awaiting_headers(self) -> bool:
        return self.conn.their_state is h11.IDLE  # h11 leaves IDLE once a request's headers are parsed

    def _start_deadline(self) -> None:
        self._header_deadline = self.loop.call_later(self.header_seconds, self._headers_too_late)

    def _cancel_deadline(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _headers_too_late(self) -> None:
        self._header_deadline = None
        if self._awaiting_headers() and not self.transport.is_closing():
            logger.info("closing a connection whose request headers did not arrive within %g s",
                        self.header_seconds)
            self.transport.close()


def header_deadline_protocol(header_seconds: float) -> type[HeaderDeadlineProtocol]:
    """The protocol class uvicorn's Config takes as `http`, with this deadline (refused unless > 0)."""
    if not (math.isfinite(header_seconds) and header_seconds > 0):
        raise ValueError(f"the header timeout must be a finite number of seconds more than 0, got {header_seconds!r}")
    return type("HeaderDeadlineProtocol", (HeaderDeadlineProtocol,), {"header_seconds": float(header_seconds)})


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
    """`app`'s server; every connection speaks h11 under the header deadline of the app's settings."""
    header_seconds = app.state.tokenmill.settings.header_timeout_seconds
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=drain_timeout,
                            http=header_deadline_protocol(header_seconds))
    return DrainingServer(config, app.state.tokenmill, drain_timeout)
