"""The checks every request passes before routing (API key, body size counted as the bytes arrive) and the
last resort that turns an unexpected failure into a JSON 500 in the API's own shape.

A plain ASGI middleware: Starlette's BaseHTTPMiddleware would relay every streamed SSE chunk through an extra
task and memory stream.
"""

from __future__ import annotations

import asyncio
import hmac
import logging

from starlette.datastructures import Headers

from .errors import error_response
from .settings import ServerSettings

logger = logging.getLogger("tokenmill.server")

# Open without the API key: probes, scrapers and the API description (what each exposes: README, Serving)
OPEN_PATHS = frozenset({"/health", "/metrics", "/info", "/version", "/docs", "/openapi.json"})


def needs_api_key(method: str, path: str) -> bool:
    """Everything but OPEN_PATHS and the chat page's files (the page asks for the key and sends it itself)."""
    page_file = method in ("GET", "HEAD") and (path == "/" or path.startswith("/static/"))
    return not page_file and path not in OPEN_PATHS


def has_api_key(authorization: str, api_key: str, x_api_key: str = "") -> bool:
    """`Authorization: Bearer <key>` (the scheme case-insensitive, RFC 9110 §11.1) or Anthropic's `x-api-key: <key>`,
    the key compared in constant time."""
    scheme, _, credentials = authorization.strip().partition(" ")
    # Starlette decodes header values as latin-1: encoding back gives the bytes the client sent
    supplied = credentials.strip().encode("latin-1", errors="replace")
    bearer = scheme.lower() == "bearer" and hmac.compare_digest(supplied, api_key.encode())
    header = bool(x_api_key) and hmac.compare_digest(x_api_key.strip().encode("latin-1", errors="replace"),
                                                     api_key.encode())
    return bearer or header


class RequestGuards:
    """API key, then the body read in full under `max_request_bytes` (413 as soon as the count passes it,
    whatever Content-Length says or whether it is sent at all), then the app with the body replayed."""

    def __init__(self, app, settings: ServerSettings):
        self.app = app
        self.settings = settings

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path, headers = scope["path"], Headers(scope=scope)
        if self.settings.api_key and needs_api_key(scope["method"], path) and \
                not has_api_key(headers.get("authorization", ""), self.settings.api_key, headers.get("x-api-key", "")):
            refusal = error_response(path, 401, "missing or wrong API key (send 'Authorization: Bearer <key>' "
                                                "or 'x-api-key: <key>')",
                                     headers={"WWW-Authenticate": "Bearer"})
            await refusal(scope, receive, send)
            return
        declared = headers.get("content-length")
        limit = self.settings.max_request_bytes
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await self._refuse_large(path, f"the request body has {declared} bytes, more than the limit of {limit}",
                                     scope, receive, send)
            return
        try:
            async with asyncio.timeout(self.settings.request_body_seconds):
                body = await read_body(receive, limit)
        except TimeoutError:
            await _too_slow(path, self.settings.request_body_seconds)(scope, receive, send)
            return
        if body is None:  # the client went away before sending it all
            return
        if len(body) > limit:
            await self._refuse_large(path, f"the request body is more than the limit of {limit} bytes",
                                     scope, receive, send)
            return
        await shield(self.app, scope, replay(body, receive), send)

    async def _refuse_large(self, path: str, message: str, scope, receive, send) -> None:
        # read and drop what is still arriving (bounded in bytes and time) before answering: closing a socket
        # with unread bytes resets it, and the client would lose the 413 before reading it. A client waiting
        # for "100 Continue" has sent nothing: reading would invite the body, so it is answered at once.
        if "100-continue" in Headers(scope=scope).get("expect", "").lower():
            await _too_large(path, message)(scope, receive, send)
            return
        try:
            async with asyncio.timeout(DRAIN_SECONDS):
                await discard_body(receive, DRAIN_LIMIT_FACTOR * self.settings.max_request_bytes)
        except TimeoutError:
            pass
        await _too_large(path, message)(scope, receive, send)


DRAIN_LIMIT_FACTOR = 16  # an oversized body is drained up to this many times the limit, then cut off
DRAIN_SECONDS = 5.0


async def discard_body(receive, budget: int) -> None:
    """Receive and drop the rest of a body, up to `budget` bytes (never kept in memory)."""
    while budget > 0:
        message = await receive()
        if message["type"] == "http.disconnect" or not message.get("more_body", False):
            return
        budget -= len(message.get("body", b""))


async def read_body(receive, limit: int) -> bytes | None:
    """The body, or its first `limit` + 1 bytes once it is longer; None if the client disconnects first."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            return b"".join(chunks)[:limit + 1]
        if not message.get("more_body", False):
            return b"".join(chunks)


def replay(body: bytes, receive):
    """A receive that gives the buffered body once, then the client's own messages (disconnects)."""
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive_replayed():
        return pending.pop() if pending else await receive()

    return receive_replayed


async def shield(app, scope, receive, send) -> None:
    """Run `app`; an exception before the response started becomes a JSON 500 in the API's shape (logged), so
    the client gets a parseable error and its kept-alive connection stays usable. After the response started
    nothing can be said in its place: re-raised, the server closes the connection."""
    started = False

    async def send_tracked(message):
        nonlocal started
        started = started or message["type"] == "http.response.start"
        await send(message)

    try:
        await app(scope, receive, send_tracked)
    except Exception as error:  # noqa: BLE001 - the last resort: everything else is answered by the routes
        if started:
            raise
        logger.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
        failure = error_response(scope["path"], 500, f"internal server error ({type(error).__name__}); the server "
                                                     "logged the details")
        await failure(scope, receive, send)


def _too_slow(path: str, seconds: float):
    return error_response(path, 408, f"the request body did not arrive within {seconds:g} s",
                          headers={"Connection": "close"})


def _too_large(path: str, message: str):
    # the rest of the body is never read: the connection closes after the answer
    return error_response(path, 413, message, headers={"Connection": "close"})
