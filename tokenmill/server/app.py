"""The FastAPI app: OpenAI and TGI routes over one async engine, with limits, auth, CORS and metrics."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..engine.async_engine import AsyncEngine
from ..engine.engine import EngineConfig, LLMEngine
from ..engine.thread_tuner import ThreadTuner
from ..version import __version__
from . import anthropic_routes, lora_routes, openai_routes, responses_routes, tgi_routes, web_page
from .errors import error_response, install_error_handlers
from .guards import RequestGuards
from .metrics import ServerMetrics
from .openapi_doc import install_openapi
from .settings import ServerSettings
from .state import ServerState


def _install_guards(app: FastAPI, settings: ServerSettings) -> None:
    app.add_middleware(RequestGuards, settings=settings)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException):
        return error_response(request.url.path, error.status_code, str(error.detail), headers=error.headers)


def create_app(engine: AsyncEngine, settings: ServerSettings | None = None,
               metrics: ServerMetrics | None = None) -> FastAPI:
    """An app serving `engine`; pass the same `metrics` the engine's on_step hook feeds."""
    settings = settings or ServerSettings()
    # Swagger UI loads its scripts from a CDN and renders blank offline: /docs is a plain local page instead
    app = FastAPI(title="tokenmill", version=__version__, docs_url=None, redoc_url=None)
    state = ServerState(engine, settings, metrics or ServerMetrics())
    state.metrics.watch(state, engine.model_info().kv_blocks)
    app.state.tokenmill = state
    install_error_handlers(app)
    install_openapi(app, api_key_set=bool(settings.api_key))
    _install_guards(app, settings)
    if settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["*"],
                           allow_headers=["*"])
    app.include_router(openai_routes.router)
    app.include_router(tgi_routes.router)
    app.include_router(anthropic_routes.router)
    app.include_router(responses_routes.router)
    app.include_router(web_page.router)
    app.include_router(lora_routes.router)

    @app.get("/docs", include_in_schema=False)
    async def docs_route():
        return HTMLResponse(_docs_page(app.openapi()))

    @app.get("/metrics")
    async def metrics_route():
        return Response(state.metrics.exposition(), media_type="text/plain; version=0.0.4")

    return app


def _docs_page(schema: dict) -> str:
    """Every route and its summary, no scripts: readable without network access; the schema is /openapi.json."""
    from html import escape

    rows = "".join(f"<tr><td>{escape(method.upper())}</td><td><code>{escape(path)}</code></td>"
                   f"<td>{escape(operation.get('summary', ''))}</td></tr>"
                   for path, methods in schema.get("paths", {}).items() for method, operation in methods.items())
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>tokenmill {escape(__version__)} API</title>"
            f"</head><body><h1>tokenmill {escape(__version__)} API</h1><p>The full OpenAPI schema: "
            f"<a href='/openapi.json'>/openapi.json</a> (load it into any OpenAPI viewer).</p>"
            f"<table><tr><th>method</th><th>path</th><th>summary</th></tr>{rows}</table></body></html>")


def build_server_app(model, tokenizer, engine_config: EngineConfig | None = None,
                     settings: ServerSettings | None = None, thread_tuner: ThreadTuner | None = None,
                     lora_adapters: dict[str, str] | None = None) -> FastAPI:
    """Model + tokenizer → engine → async engine → app, with metrics wired to every engine step;
    `lora_adapters` (name → PEFT folder) are loaded before the engine starts."""
    metrics = ServerMetrics()
    stall = (settings or ServerSettings()).engine_stall_seconds
    engine = LLMEngine(model, tokenizer, engine_config)
    for name, path in (lora_adapters or {}).items():
        engine.load_adapter(name, path)
    app = create_app(AsyncEngine(engine, on_step=metrics.on_step, tuner=thread_tuner, stall_seconds=stall), settings,
                     metrics)
    app.state.tokenmill.adapter_sources.update({name: str(path) for name, path in (lora_adapters or {}).items()})
    return app
