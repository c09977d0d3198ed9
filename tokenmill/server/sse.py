"""Server-sent events: `data: <json>\n\n` frames, OpenAI's closing `data: [DONE]`, and the error event a stream
that fails after its 200 ends with."""

from __future__ import annotations

import json
import logging
from typing import Any, AsyncIterator

from ..engine.async_engine import EngineStepError
from .errors import stream_error_event

logger = logging.getLogger("tokenmill.server")


def sse_event(payload: Any) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


SSE_DONE = "data: [DONE]\n\n"
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


async def ending_in_error_event(events: AsyncIterator[str], path: str) -> AsyncIterator[str]:
    """`events`, and if they fail part-way (the status line is long sent) one last error event in the API's
    shape instead of a connection cut without a word."""
    try:
        async for event in events:
            yield event
    except Exception as error:  # noqa: BLE001 - any failure ends the stream with its error event
        if isinstance(error, EngineStepError):
            message = str(error)
        else:
            logger.exception("a stream on %s failed", path)
            message = f"internal server error ({type(error).__name__}); the server logged the details"
        yield sse_event(stream_error_event(path, message))
    finally:
        await events.aclose()  # runs the route's own cleanup (its admission slot) now, not at garbage collection


def sse_named_event(name: str, payload: Any) -> str:
    """A frame with its event name (`event: <name>`), as the Anthropic and Responses streams send them."""
    return f"event: {name}\n{sse_event(payload)}"
