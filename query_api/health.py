"""Liveness, readiness and metrics endpoints (no authentication: for probes and scrapers)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from query_api.schemas import Health

router = APIRouter(tags=["operations"])


@router.get("/healthz", response_model=Health)
def healthz() -> Health:
    """The process is up (it does not touch ClickHouse)."""
    return Health(status="ok")


@router.get("/readyz", response_model=Health, responses={503: {"model": Health}})
def readyz(request: Request) -> Response:
    """ClickHouse answers and the API's tables exist; otherwise 503 saying why."""
    problem = request.app.state.db.check()
    if problem is None:
        return JSONResponse({"status": "ready", "detail": None})
    return JSONResponse({"status": "unavailable", "detail": problem}, status_code=503)


@router.get("/metrics", response_class=Response)
def metrics(request: Request) -> Response:
    """Prometheus text exposition."""
    body = generate_latest(request.app.state.metrics.registry)
    return Response(content=body, media_type=CONTENT_TYPE_LATEST)
