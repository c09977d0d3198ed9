"""/openapi.json as the routes answer: each API's own error object and codes (OpenAI refuses a bad body with
400, TGI with 422: FastAPI's generic 422 goes), SSE and plain-text bodies where the routes send them, /health's
empty body, and the bearer scheme when an API key is set."""

from __future__ import annotations

from .errors import is_openai_path
from .guards import needs_api_key

OPENAI_ERROR = {
    "type": "object", "required": ["error"],
    "properties": {"error": {
        "type": "object", "required": ["message", "type"],
        "properties": {"message": {"type": "string"}, "type": {"type": "string"},
                       "param": {"type": ["string", "null"]}, "code": {"type": ["string", "null"]}}}},
}
TGI_ERROR = {"type": "object", "required": ["error", "error_type"],
             "properties": {"error": {"type": "string"}, "error_type": {"type": "string"}}}

# what each status means, per API; every route may also answer 401 (key), 413 (body) and 500
_OPENAI_CODES = {400: "invalid request (the body, a field, or a limit)", 404: "no such model", 429: "too many "
                 "concurrent requests", 503: "shutting down"}
_TGI_CODES = {404: "no such adapter (adapter_id)", 422: "invalid request (the body, a field, or a limit)",
              424: "generation failed",
              429: "too many concurrent requests", 503: "shutting down or unhealthy"}
_COMMON_CODES = {401: "missing or wrong API key", 408: "request body too slow to arrive",
                 413: "request body over the limit", 500: "internal error"}

# one event (OpenAPI 3.1 reads an event stream's schema per event): its `data` a JSON text or OpenAI's [DONE]
_SSE = {"text/event-stream": {"schema": {"type": "object", "required": ["data"],
                                         "properties": {"data": {"type": "string"}, "event": {"type": "string"}}}}}
# the 200 body of routes that do not answer JSON alone (None: no body)
_SUCCESS_CONTENT = {
    ("get", "/health"): None,
    ("get", "/"): {"text/html": {"schema": {"type": "string"}}},
    ("get", "/metrics"): {"text/plain": {"schema": {"type": "string"}}},
    ("post", "/generate_stream"): _SSE,
    ("post", "/v1/load_lora_adapter"): {"text/plain": {"schema": {"type": "string"}}},
    ("post", "/v1/unload_lora_adapter"): {"text/plain": {"schema": {"type": "string"}}},
}
# codes only some routes answer
_ROUTE_CODES = {
    ("post", "/v1/load_lora_adapter"): {403: "runtime LoRA loading is disabled (--allow-runtime-lora)"},
    ("post", "/v1/unload_lora_adapter"): {403: "runtime LoRA loading is disabled (--allow-runtime-lora)",
                                          409: "the adapter is in use by running requests"},
}
_MAY_STREAM = {("post", "/v1/chat/completions"), ("post", "/v1/completions"), ("post", "/")}


def install_openapi(app, api_key_set: bool) -> None:
    """Replace `app.openapi` by the corrected document (built once, as FastAPI caches its own)."""
    generate = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            app.openapi_schema = corrected(generate(), api_key_set)
        return app.openapi_schema

    app.openapi = openapi


def corrected(schema: dict, api_key_set: bool) -> dict:
    for path, operations in schema.get("paths", {}).items():
        for method, operation in operations.items():
            _correct_operation(path, method, operation, api_key_set)
    for unused in ("HTTPValidationError", "ValidationError"):
        schema.get("components", {}).get("schemas", {}).pop(unused, None)
    if api_key_set:
        schema.setdefault("components", {}).setdefault("securitySchemes", {})["bearer"] = {
            "type": "http", "scheme": "bearer"}
    return schema


def _correct_operation(path: str, method: str, operation: dict, api_key_set: bool) -> None:
    responses = operation.setdefault("responses", {})
    success = responses.setdefault("200", {"description": "Successful Response"})
    if (method, path) in _SUCCESS_CONTENT:
        success.pop("content", None)
        if _SUCCESS_CONTENT[(method, path)] is not None:
            success["content"] = _SUCCESS_CONTENT[(method, path)]
    elif (method, path) in _MAY_STREAM:
        success.setdefault("content", {}).update(_SSE)
    openai = is_openai_path(path)
    responses.pop("422", None)  # FastAPI's HTTPValidationError: neither API answers that shape
    error_schema = OPENAI_ERROR if openai else TGI_ERROR
    codes = {**(_OPENAI_CODES if openai else _TGI_CODES), **_COMMON_CODES, **_ROUTE_CODES.get((method, path), {})}
    guarded = api_key_set and needs_api_key(method.upper(), path)
    if not guarded:
        codes.pop(401)
    for code, meaning in sorted(codes.items()):
        responses[str(code)] = {"description": meaning, "content": {"application/json": {"schema": error_schema}}}
    if guarded:
        operation["security"] = [{"bearer": []}]
