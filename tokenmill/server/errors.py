"""Errors in each API's own shape: OpenAI `{"error": {...}}` under /v1, TGI `{"error", "error_type"}` elsewhere."""

from __future__ import annotations

import re

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from ..engine.async_engine import EngineDeadError, EngineStepError

_OPENAI_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
                 408: "timeout",
                 413: "invalid_request_error", 429: "rate_limit_exceeded", 503: "service_unavailable",
                 500: "server_error", 424: "server_error"}
_TGI_TYPES = {400: "validation", 401: "authentication", 404: "not_found", 408: "timeout", 413: "validation",
              422: "validation",
              429: "overloaded", 424: "generation", 503: "unhealthy", 500: "generation"}

_ANTHROPIC_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                    404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error", 500: "api_error",
                    503: "overloaded_error"}


class APIError(Exception):
    """Raised by routes; `status` is TGI's code, `openai_status` the OpenAI one (422 → 400)."""

    def __init__(self, status: int, message: str, param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param = status, message, param


def is_openai_path(path: str) -> bool:
    return path.startswith("/v1/")


def is_anthropic_path(path: str) -> bool:
    return path == "/v1/messages" or path.startswith("/v1/messages/")


_UNPARSABLE = "There was an error parsing the body"  # FastAPI's detail when the body is not even text


def error_response(path: str, status: int, message: str, param: str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    if message == _UNPARSABLE:
        message = "the request body could not be parsed: it must be UTF-8 encoded JSON"
    if is_anthropic_path(path):
        status = 400 if status == 422 else status
        body = {"type": "error", "error": {"type": _ANTHROPIC_TYPES.get(status, "api_error"), "message": message}}
    elif is_openai_path(path):
        status = 400 if status == 422 else status
        body = {"error": {"message": message, "type": _OPENAI_TYPES.get(status, "invalid_request_error"),
                          "param": param, "code": None}}
    else:
        body = {"error": message, "error_type": _TGI_TYPES.get(status, "validation")}
    return JSONResponse(body, status_code=status, headers=headers)


def stream_error_event(path: str, message: str) -> dict:
    """The payload of an error that happens after a stream has started (the status is already 200)."""
    if is_anthropic_path(path):
        return {"type": "error", "error": {"type": "api_error", "message": message}}
    if is_openai_path(path):
        return {"error": {"message": message, "type": "server_error", "param": None, "code": None}}
    return {"error": message, "error_type": "generation"}


_UNION_TAGS = {"str", "int", "float", "bool", "dict", "list", "none"}


def _field_path(loc) -> list[str]:
    """The body's field path of a pydantic error location, up to the first union member's tag (such as
    `literal['none','auto']` or a class name): what a client names is the field, not pydantic's branch."""
    path = []
    for part in loc:
        text = str(part)
        if part == "body":
            continue
        if not re.fullmatch(r"[a-z_][a-z0-9_]*|\d+", text) or text in _UNION_TAGS:
            break
        path.append(text)
    return path


def _describe_validation(error: RequestValidationError) -> tuple[str, str | None]:
    problems, param = [], None
    for item in error.errors():
        location = ".".join(_field_path(item.get("loc", ())))
        if item.get("type") == "json_invalid":  # the parser's own words are in ctx (msg is a generic title)
            reason = (item.get("ctx") or {}).get("error") or item.get("msg")
            return f"the request body is not valid JSON: {reason}", None
        param = param or location or None
        if item.get("type") == "extra_forbidden":
            problems.append(f"{location}: unrecognized request argument; tokenmill does not implement it")
            continue
        problems.append(f"{location or 'body'}: {item.get('msg')}")
    return "invalid request: " + "; ".join(problems), param


def install_error_handlers(app) -> None:
    @app.exception_handler(APIError)
    async def _api_error(request: Request, error: APIError):
        _count_rejected(request, error.status)
        return error_response(request.url.path, error.status, error.message, error.param)

    @app.exception_handler(EngineStepError)
    async def _engine_error(request: Request, error: EngineStepError):
        if isinstance(error, EngineDeadError):  # nothing can be served until the server is restarted
            return error_response(request.url.path, 503, str(error))
        return error_response(request.url.path, 424 if not is_openai_path(request.url.path) else 500, str(error))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, error: RequestValidationError):
        _count_rejected(request, 422)
        message, param = _describe_validation(error)
        return error_response(request.url.path, 422, message, param)


def _count_rejected(request: Request, status: int) -> None:
    state = getattr(request.app.state, "tokenmill", None)
    if state is not None and status in (400, 404, 413, 422):
        state.metrics.requests.labels(outcome="rejected").inc()
