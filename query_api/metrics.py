"""Prometheus metrics of one app instance (its own registry, so tests can build many apps)."""

from __future__ import annotations

import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from query_api.cache import SettledCache, SharedReads

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class CacheCollector(Collector):
    """Hits, misses and size of the settled-aggregate cache, read when scraped."""

    def __init__(self, cache: SettledCache, shared: SharedReads | None = None) -> None:
        self.cache = cache
        self.shared = shared

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        lookups = CounterMetricFamily(
            "llm_usage_api_cache_lookups",
            "settled-aggregate cache lookups, by result",
            labels=["result"],
        )
        lookups.add_metric(["hit"], self.cache.hits)
        lookups.add_metric(["miss"], self.cache.misses)
        yield lookups
        yield GaugeMetricFamily(
            "llm_usage_api_cache_rows", "rows the cache holds", value=self.cache.rows
        )
        if self.shared is not None:
            yield CounterMetricFamily(
                "llm_usage_api_version_reads_shared",
                "requests answered by a version read another request sent",
                value=self.shared.shared,
            )


class ApiMetrics:
    """Request counts and latencies per route template, ClickHouse outages, the cache."""

    def __init__(
        self, cache: SettledCache | None = None, shared: SharedReads | None = None
    ) -> None:
        self.registry = CollectorRegistry()
        if cache is not None:
            self.registry.register(CacheCollector(cache, shared))
        self.requests = Counter(
            "llm_usage_api_requests",
            "HTTP requests by method, route template and status",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "llm_usage_api_request_duration_seconds",
            "HTTP request latency by route template",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.unavailable = Counter(
            "llm_usage_api_clickhouse_unavailable",
            "requests answered 503 because ClickHouse was unreachable or failing",
            registry=self.registry,
        )


class MetricsMiddleware:
    """Pure ASGI middleware observing every request under its route template (bounded
    label cardinality); cheaper per request than Starlette's ``BaseHTTPMiddleware``.

    ``app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)``.
    """

    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_observed(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_observed)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.requests.labels(scope["method"], route, str(status)).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - started)
