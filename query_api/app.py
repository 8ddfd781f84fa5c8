"""The FastAPI application factory: ``create_app(settings)``; run by ``llm-usage api``."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from llm_usage.settings import Settings, get_settings
from query_api import alerts_api, exports, health, keys_api, page, usage
from query_api.cache import SettledCache
from query_api.db import ClickHouse, Unavailable
from query_api.keys import Authenticator, KeyStore
from query_api.metrics import ApiMetrics, MetricsMiddleware
from query_api.repository import UsageRepository
from query_api.window import WindowError
from stream_processor.alerts.store import AlertStore

log = logging.getLogger(__name__)


def create_app(
    settings: Settings | None = None, *, clock: Callable[[], float] = time.time
) -> FastAPI:
    """A ready-to-serve app; ``clock`` (seconds since the epoch) is "now" for rolling periods."""
    settings = settings or get_settings()
    db = ClickHouse(settings)
    cache = SettledCache(settings.api_cache_max_rows)
    repository = UsageRepository(db, cache=cache, settle_s=settings.api_cache_settle_s, clock=clock)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        repository.close()
        db.reset()

    app = FastAPI(
        title="LLM usage API",
        version="1.0",
        description="Exact cost, token and call analytics of LLM API usage, per tenant.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.clock = clock
    app.state.db = db
    app.state.repository = repository
    app.state.authenticator = Authenticator(settings, KeyStore(db))
    app.state.alert_store = AlertStore(db)
    app.state.metrics = ApiMetrics(cache, repository.shared_reads)

    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)
    install_error_handlers(app)
    app.include_router(health.router)
    app.include_router(usage.router)
    app.include_router(exports.router)
    app.include_router(keys_api.router)
    app.include_router(alerts_api.router)
    # --- the Usage page (issue 6): include its router here -----------------------------
    app.include_router(page.router)
    return app


def install_error_handlers(app: FastAPI) -> None:
    """Every error is JSON ``{"detail": "<message>"}``: 422 bad input, 503 no ClickHouse."""

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        messages = []
        for error in exc.errors():
            where = ".".join(str(part) for part in error.get("loc", ()) if part != "query")
            messages.append(f"{where}: {error.get('msg', 'invalid')}" if where else error["msg"])
        return JSONResponse({"detail": "; ".join(messages) or "invalid request"}, 422)

    @app.exception_handler(WindowError)
    async def _bad_window(_: Request, exc: WindowError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, 422)

    @app.exception_handler(Unavailable)
    async def _unavailable(_: Request, exc: Unavailable) -> JSONResponse:
        app.state.metrics.unavailable.inc()
        return JSONResponse({"detail": str(exc)}, 503, headers={"Retry-After": "5"})

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s", request.url.path)
        return JSONResponse({"detail": "internal error; see the API log"}, 500)
