"""The browser chat page at `GET /`: plain HTML, JavaScript and CSS shipped inside the package (static/), so it
runs offline with no CDN and no build step; it talks to the server through the streamed /v1/chat/completions."""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter, HTTPException
from fastapi.responses import Response

router = APIRouter()

# the page's files and their media types; nothing else under /static is served
ASSET_TYPES = {
    "chat.html": "text/html; charset=utf-8",
    "markdown.js": "text/javascript; charset=utf-8",
    "chat.js": "text/javascript; charset=utf-8",
    "chat.css": "text/css; charset=utf-8",
}
# only the page's own files run or load (no inline script, nothing from elsewhere): a model's answer rendered
# as markdown can never bring in a script, even through a renderer bug
CONTENT_SECURITY_POLICY = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                           "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
                           "form-action 'none'")
PAGE_HEADERS = {"Content-Security-Policy": CONTENT_SECURITY_POLICY, "X-Content-Type-Options": "nosniff",
                "Cache-Control": "no-cache", "Referrer-Policy": "no-referrer"}


def asset_bytes(name: str) -> bytes:
    """One of the page's files, read from the installed package."""
    return resources.files(__package__).joinpath("static", name).read_bytes()


def _asset_response(name: str) -> Response:
    return Response(asset_bytes(name), media_type=ASSET_TYPES[name], headers=PAGE_HEADERS)


@router.get("/", summary="the web chat page (streamed answers, conversation kept in the browser)")
async def chat_page():
    return _asset_response("chat.html")


@router.get("/static/{name}", include_in_schema=False)
async def chat_asset(name: str):
    if name not in ASSET_TYPES or name == "chat.html":
        # a plain HTTP 404 (the app's error shape), not an APIError: it is no refused generation request
        raise HTTPException(404, f"there is no static file {name!r}")
    return _asset_response(name)
