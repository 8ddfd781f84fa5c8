"""The Usage page: ``/`` and its static assets, served from the API's own origin.

The page is static (``query_api/static/``): it asks for an API key once, keeps it in the
browser, and calls the ``/v1/usage/*`` endpoints with it. Nothing is fetched from another
origin at run time; the Content-Security-Policy below makes the browser enforce that. The
charting library (Chart.js, MIT) is committed in ``static/vendor/`` (``make vendor``
refreshes it from ``package-lock.json``).

Wired into the app with ``app.include_router(page.router)``.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import FileResponse, Response
from starlette.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).resolve().parent / "static"

CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)

# Assets are revalidated on every load (ETag / Last-Modified, so unchanged files cost a
# 304): a new release of the page is never mixed with a cached older script.
_ASSET_HEADERS = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}
_SERVED_SUFFIXES = {".js", ".css", ".svg", ".md"}

router = APIRouter(include_in_schema=False)
_assets = StaticFiles(directory=STATIC_DIR)


@router.get("/")
def usage_page() -> Response:
    """The Usage page itself."""
    return FileResponse(
        STATIC_DIR / "index.html",
        media_type="text/html; charset=utf-8",
        headers={
            **_ASSET_HEADERS,
            "Content-Security-Policy": CONTENT_SECURITY_POLICY,
            "Referrer-Policy": "no-referrer",
        },
    )


@router.api_route("/static/{asset_path:path}", methods=["GET", "HEAD"])
async def static_asset(asset_path: str, request: Request) -> Response:
    """A file under ``query_api/static/`` (path traversal is refused by StaticFiles)."""
    if Path(asset_path).suffix not in _SERVED_SUFFIXES:
        raise HTTPException(status_code=404, detail="Not Found")
    response = await _assets.get_response(asset_path, request.scope)
    response.headers.update(_ASSET_HEADERS)
    if asset_path.endswith(".js"):
        response.headers["Content-Type"] = "text/javascript; charset=utf-8"
    return response
