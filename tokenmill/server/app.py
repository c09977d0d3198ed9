"""The FastAPI app: OpenAI and TGI routes over one async engine, with limits, auth, CORS and metrics."""

from __future__ import annotations

import hmac

from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..engine.async_engine import AsyncEngine
from ..engine.engine import EngineConfig, LLMEngine
from . import openai_routes, tgi_routes
from .errors import error_response, install_error_handlers
from .metrics import ServerMetrics
from .settings import ServerSettings
from .state import ServerState

GENERATION_ROUTES = {"/v1/chat/completions", "/v1/completions", "/generate", "/generate_stream", "/"}


def _install_guards(app: FastAPI, settings: ServerSettings) -> None:
    @app.middleware("http")
    async def guards(request: Request, call_next):
        path = request.url.path
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > settings.max_request_bytes:
            return error_response(path, 413, f"the request body has {length} bytes, more than the limit of "
                                             f"{settings.max_request_bytes}")
        if settings.api_key and request.method == "POST" and path in GENERATION_ROUTES:
            supplied = request.headers.get("authorization", "")
            expected = f"Bearer {settings.api_key}"
            if not hmac.compare_digest(supplied.encode(), expected.encode()):
                return error_response(path, 401, "missing or wrong API key (send 'Authorization: Bearer <key>')")
        return await call_next(request)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException):
        return error_response(request.url.path, error.status_code, str(error.detail))


def create_app(engine: AsyncEngine, settings: ServerSettings | None = None,
               metrics: ServerMetrics | None = None) -> FastAPI:
    """An app serving `engine`; pass the same `metrics` the engine's on_step hook feeds."""
    settings = settings or ServerSettings()
    app = FastAPI(title="tokenmill", version="0.1.0")
    state = ServerState(engine, settings, metrics or ServerMetrics())
    app.state.tokenmill = state
    install_error_handlers(app)
    _install_guards(app, settings)
    if settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["*"],
                           allow_headers=["*"])
    app.include_router(openai_routes.router)
    app.include_router(tgi_routes.router)

    @app.get("/metrics")
    async def metrics_route():
        return Response(state.metrics.exposition(), media_type="text/plain; version=0.0.4")

    return app


def build_server_app(model, tokenizer, engine_config: EngineConfig | None = None,
                     settings: ServerSettings | None = None) -> FastAPI:
    """Model + tokenizer → engine → async engine → app, with metrics wired to every engine step."""
    metrics = ServerMetrics()
    engine = AsyncEngine(LLMEngine(model, tokenizer, engine_config), on_step=metrics.on_step)
    return create_app(engine, settings, metrics)
