"""The ingest application: ``create_ingest_app(settings)``; run by ``llm-usage ingest``.

Its own process, so it scales apart from the query API; the same FastAPI stack, keys and
error handling. It needs Kafka to accept events and ClickHouse only to look up stored keys.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, Counter, generate_latest

from llm_usage.settings import Settings, get_settings
from query_api.app import install_error_handlers
from query_api.db import ClickHouse
from query_api.ingest import events, traces
from query_api.ingest.genai import SpanMapping
from query_api.ingest.kafka import EventSink, KafkaUnavailable
from query_api.ingest.limits import RateLimiter
from query_api.keys import Authenticator, KeyStore
from query_api.metrics import ApiMetrics, MetricsMiddleware
from query_api.schemas import Health


class IngestMetrics:
    """Event counts per endpoint, next to the request metrics of :class:`ApiMetrics`."""

    def __init__(self, api: ApiMetrics) -> None:
        labels = ["endpoint"]
        self.accepted = Counter(
            "llm_usage_ingest_events_accepted",
            "events acknowledged by Kafka",
            labels,
            registry=api.registry,
        )
        self.rejected = Counter(
            "llm_usage_ingest_events_rejected",
            "events or GenAI spans rejected, with a reason",
            labels,
            registry=api.registry,
        )
        self.ignored = Counter(
            "llm_usage_ingest_spans_ignored",
            "OTLP spans that are not GenAI model calls",
            registry=api.registry,
        )

    def count(self, endpoint: str, accepted: int, rejected: int, *, ignored: int = 0) -> None:
        self.accepted.labels(endpoint).inc(accepted)
        self.rejected.labels(endpoint).inc(rejected)
        self.ignored.inc(ignored)


health = APIRouter(tags=["operations"])


@health.get("/healthz", response_model=Health)
def healthz() -> Health:
    """The process is up."""
    return Health(status="ok")


@health.get("/readyz", response_model=Health, responses={503: {"model": Health}})
async def readyz(request: Request) -> Response:
    """Kafka accepts connections (events would be stored); otherwise 503 saying why."""
    try:
        await request.app.state.sink.connect()
    except KafkaUnavailable as exc:
        return JSONResponse({"status": "unavailable", "detail": str(exc)}, status_code=503)
    return JSONResponse({"status": "ready", "detail": None})


@health.get("/metrics", response_class=Response)
def metrics(request: Request) -> Response:
    """Prometheus text exposition."""
    body = generate_latest(request.app.state.metrics.registry)
    return Response(content=body, media_type=CONTENT_TYPE_LATEST)


def create_ingest_app(settings: Settings | None = None) -> FastAPI:
    """A ready-to-serve ingest app (``POST /v1/events``, ``POST /v1/traces``)."""
    settings = settings or get_settings()
    db = ClickHouse(settings)
    sink = EventSink(settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await sink.stop()
        db.reset()

    app = FastAPI(
        title="LLM usage ingest",
        version="1.0",
        description="Usage events over HTTP and OpenTelemetry GenAI spans over OTLP/HTTP.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.db = db
    app.state.sink = sink
    app.state.authenticator = Authenticator(settings, KeyStore(db))
    app.state.limiter = RateLimiter(settings.ingest_rate_events_per_s, settings.ingest_rate_burst_s)
    app.state.span_mapping = (
        SpanMapping.from_file(settings.ingest_otlp_mapping)
        if settings.ingest_otlp_mapping
        else SpanMapping()
    )
    app.state.metrics = ApiMetrics()
    app.state.ingest_metrics = IngestMetrics(app.state.metrics)

    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)
    install_error_handlers(app)

    @app.exception_handler(KafkaUnavailable)
    async def _kafka_down(_: Request, exc: KafkaUnavailable) -> JSONResponse:
        return JSONResponse(
            {"detail": f"{exc}; nothing was accepted, retry later"},
            503,
            headers={"Retry-After": "5"},
        )

    app.include_router(health)
    app.include_router(events.router)
    app.include_router(traces.router)
    return app
