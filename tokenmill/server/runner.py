"""Run the app under uvicorn with a graceful drain: on SIGTERM/SIGINT new requests get 503 while running
ones finish, then the server exits."""

from __future__ import annotations

import threading
import time

import uvicorn

from .state import ServerState


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
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=drain_timeout)
    return DrainingServer(config, app.state.tokenmill, drain_timeout)
