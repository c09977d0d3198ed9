"""Server-sent events: `data: <json>\n\n` frames, and OpenAI's closing `data: [DONE]`."""

from __future__ import annotations

import json
from typing import Any


def sse_event(payload: Any) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


SSE_DONE = "data: [DONE]\n\n"
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def sse_named_event(name: str, payload: Any) -> str:
    """A frame with its event name (`event: <name>`), as the Anthropic and Responses streams send them."""
    return f"event: {name}\n{sse_event(payload)}"
