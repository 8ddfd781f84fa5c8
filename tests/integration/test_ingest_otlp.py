"""``POST /v1/traces`` driven by clients written by others: the OpenTelemetry SDK with its
OTLP/HTTP exporter, and an OpenTelemetry instrumentation of the anthropic SDK (traceloop's
``opentelemetry-instrumentation-anthropic``) around the real SDK on an ``httpx.MockTransport``.
What the API then reports equals what the spans (and the mocked responses) said, call by call.
"""

from __future__ import annotations

import base64
import contextvars
import json
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import anthropic
import httpx
import httpx2
import pytest
from google.protobuf import json_format
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Status, StatusCode

from llm_usage.runner import IngestProcess
from llm_usage.settings import Settings
from llm_usage.simulate import book_pricer
from producers.contract import UsageEvent
from query_api.ingest.genai import span_event_id
from query_api.keys import Scope
from stream_processor.harness import WorkerProcess
from stream_processor.pricing import PriceBook
from tests.conftest import wait_for
from tests.integration.test_processor_e2e import totals, worker_settings

pytestmark = pytest.mark.integration

PRICE = book_pricer(PriceBook.load())


def event_id(span: ReadableSpan, tenant: str = "acme") -> str:
    context = span.get_span_context()
    assert context is not None
    trace, span_id = context.trace_id.to_bytes(16, "big"), context.span_id.to_bytes(8, "big")
    return span_event_id(tenant, trace, span_id)


def records(settings: Settings, key: str) -> dict[str, dict[str, Any]]:
    """Every stored call of ``key``'s tenant, through the query API, by event id."""
    from fastapi.testclient import TestClient

    from query_api.app import create_app

    window = {
        "from": (datetime.now(UTC) - timedelta(days=2)).isoformat(),
        "to": (datetime.now(UTC) + timedelta(minutes=5)).isoformat(),
        "page_size": 100,
    }
    with TestClient(create_app(settings)) as client:
        answer = client.get(
            "/v1/usage/records", params=window, headers={"Authorization": f"Bearer {key}"}
        )
        assert answer.status_code == 200, answer.text
        return {item["event_id"]: item for item in answer.json()["items"]}


@pytest.fixture
def pipeline(
    migrated: Settings,
    worker_factory: Callable[[Settings], WorkerProcess],
    ingest_factory: Callable[..., IngestProcess],
) -> tuple[Settings, IngestProcess]:
    settings = worker_settings(migrated)
    ingest = ingest_factory(settings)
    worker_factory(settings)
    return settings, ingest


def _provider(ingest: IngestProcess, key: str, memory: InMemorySpanExporter) -> TracerProvider:
    provider = TracerProvider(resource=Resource.create({"service.name": "go-chat-gateway"}))
    exporter = OTLPSpanExporter(
        endpoint=f"{ingest.base_url}/v1/traces", headers={"Authorization": f"Bearer {key}"}
    )
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    return provider


def test_otel_sdk_protobuf_and_json_exports_become_exact_usage_events(
    pipeline: tuple[Settings, IngestProcess], new_key: Callable[..., str]
) -> None:
    settings, ingest = pipeline
    key, read = new_key("acme", Scope.INGEST), new_key("acme", Scope.READ)
    memory = InMemorySpanExporter()
    provider = _provider(ingest, key, memory)
    tracer = provider.get_tracer("test")
    calls = [  # (span attributes, what the event must hold: input, output, cache read, write)
        (
            {
                "gen_ai.operation.name": "chat",
                "gen_ai.conversation.id": "conv-1",
                "gen_ai.usage.input_tokens": 1500,
                "gen_ai.usage.output_tokens": 300,
                "gen_ai.usage.cache_read.input_tokens": 1000,
                "gen_ai.usage.cache_creation.input_tokens": 200,
            },
            (300, 300, 1000, 200),
        ),
        (
            {
                "gen_ai.operation.name": "chat",
                "gen_ai.agent.id": "agent-7",
                "gen_ai.agent.name": "Nightly digest",
                "gen_ai.usage.input_tokens": 800,
                "gen_ai.usage.output_tokens": 90,
            },
            (800, 90, 0, 0),
        ),
        # an instrumentation that reports Anthropic's input_tokens (cache excluded) says so
        (
            {
                "llm_usage.source": "memory",
                "llm_usage.source_id": "mem-3",
                "llm_usage.input_tokens_include_cache": False,
                "gen_ai.usage.input_tokens": 50,
                "gen_ai.usage.output_tokens": 20,
                "gen_ai.usage.cache_read.input_tokens": 4000,
            },
            (50, 20, 4000, 0),
        ),
    ]
    with tracer.start_as_current_span(
        "invoke_agent",
        attributes={
            "gen_ai.operation.name": "invoke_agent",
            "gen_ai.request.model": "claude-sonnet-5-5",
            "gen_ai.usage.input_tokens": 999_999,
        },
    ):
        for attributes, _ in calls:
            with tracer.start_as_current_span("chat claude-sonnet-5-5") as span:
                span.set_attributes(
                    {
                        "gen_ai.provider.name": "anthropic",
                        "gen_ai.request.model": "claude-sonnet-5-5",
                        **attributes,
                    }
                )
        with tracer.start_as_current_span("GET /healthz"):
            pass
        with tracer.start_as_current_span("chat claude-haiku-4-5") as failed:
            failed.set_attributes(
                {
                    "gen_ai.operation.name": "chat",
                    "gen_ai.request.model": "claude-haiku-4-5",
                    "gen_ai.conversation.id": "conv-1",
                    "gen_ai.usage.input_tokens": 10,
                }
            )
            failed.set_status(Status(StatusCode.ERROR, "overloaded"))
    assert provider.force_flush(10_000)
    spans = {s.name: s for s in memory.get_finished_spans()}
    sdk_calls = [s for s in memory.get_finished_spans() if s.name.startswith("chat ")]
    assert len(sdk_calls) == 4

    # The same kind of spans again, as an OTLP/JSON body (the Python exporter only speaks
    # protobuf; JSON is what browsers and several SDKs send): hex ids, camelCase, int strings.
    memory_json = InMemorySpanExporter()
    json_provider = TracerProvider(resource=Resource.create({"service.name": "ts-agents"}))
    json_provider.add_span_processor(SimpleSpanProcessor(memory_json))
    with json_provider.get_tracer("test").start_as_current_span("chat claude-opus-4-5") as span:
        span.set_attributes(
            {
                "gen_ai.operation.name": "chat",
                "gen_ai.agent.id": "agent-9",
                "gen_ai.request.model": "claude-opus-4-5",
                "gen_ai.usage.input_tokens": 700,
                "gen_ai.usage.output_tokens": 70,
            }
        )
    json_span = memory_json.get_finished_spans()[0]
    body = _otlp_json(encode_spans([json_span]))
    answer = httpx.post(
        f"{ingest.base_url}/v1/traces",
        content=json.dumps(body),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    assert answer.json().get("partialSuccess", {}).get("rejectedSpans", 0) == 0

    wait_for(lambda: totals(settings)["raw"][0] >= 5, 90, "the five model calls")
    stored = records(settings, read)
    assert len(stored) == 5, "invoke_agent and the HTTP span are not calls"
    for span, (attributes, want) in zip(sdk_calls[:3], calls, strict=True):
        got = stored[event_id(span)]
        assert (
            got["input_tokens"],
            got["output_tokens"],
            got["cache_read_input_tokens"],
            got["cache_creation_input_tokens"],
        ) == want, attributes
        expected = UsageEvent(
            tenant_id="acme",
            occurred_at=datetime.now(UTC),
            source="chat",
            source_id="x",
            model="claude-sonnet-5-5",
            input_tokens=want[0],
            output_tokens=want[1],
            cache_read_input_tokens=want[2],
            cache_creation_input_tokens=want[3],
        )
        assert Decimal(got["cost_usd"]) == PRICE(expected)
        start, end = span.start_time or 0, span.end_time or 0
        assert got["duration_ms"] == (end - start) // 1_000_000
    agent = stored[event_id(sdk_calls[1])]
    assert (agent["source"], agent["source_id"], agent["name"]) == (
        "agent",
        "agent-7",
        "Nightly digest",
    )
    assert stored[event_id(sdk_calls[0])]["source"] == "chat"
    assert stored[event_id(sdk_calls[2])]["source"] == "memory"
    assert stored[event_id(spans["chat claude-haiku-4-5"])]["status"] == "error"
    assert stored[event_id(json_span)]["source_id"] == "agent-9"


def test_otlp_partial_success_names_the_spans_that_cannot_become_events(
    migrated: Settings,
    ingest_factory: Callable[..., IngestProcess],
    new_key: Callable[..., str],
) -> None:
    ingest = ingest_factory(migrated)
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span("chat") as span:  # no conversation, agent or source id
        span.set_attributes(
            {
                "gen_ai.operation.name": "chat",
                "gen_ai.request.model": "m",
                "gen_ai.usage.input_tokens": 5,
            }
        )
    with tracer.start_as_current_span("chat") as span:  # cached tokens above the input
        span.set_attributes(
            {
                "gen_ai.request.model": "m",
                "gen_ai.conversation.id": "c",
                "gen_ai.usage.input_tokens": 5,
                "gen_ai.usage.cache_read.input_tokens": 50,
            }
        )
    request = encode_spans(memory.get_finished_spans())
    key = new_key("acme", Scope.INGEST)
    answer = httpx.post(
        f"{ingest.base_url}/v1/traces",
        content=request.SerializeToString(),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/x-protobuf"},
        timeout=30,
    )
    assert answer.status_code == 200
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceResponse,
    )

    response = ExportTraceServiceResponse.FromString(answer.content)
    assert response.partial_success.rejected_spans == 2
    message = response.partial_success.error_message
    assert "gen_ai.conversation.id" in message and "llm_usage.input_tokens_include_cache" in message


_conversation: contextvars.ContextVar[str] = contextvars.ContextVar("conversation", default="")


class ConversationAttributes(SpanProcessor):
    """How an application tags its instrumented calls: a processor copies the current
    conversation id onto every span as it starts (the instrumentation knows nothing of it)."""

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        if _conversation.get():
            span.set_attribute("gen_ai.conversation.id", _conversation.get())


@pytest.fixture
def instrumented(
    pipeline: tuple[Settings, IngestProcess], new_key: Callable[..., str]
) -> Iterator[tuple[TracerProvider, InMemorySpanExporter, str]]:
    from opentelemetry.instrumentation.anthropic import AnthropicInstrumentor

    _, ingest = pipeline
    memory = InMemorySpanExporter()
    provider = _provider(ingest, new_key("acme", Scope.INGEST), memory)
    provider.add_span_processor(ConversationAttributes())
    instrumentor = AnthropicInstrumentor()
    instrumentor.instrument(tracer_provider=provider)
    try:
        yield provider, memory, new_key("acme", Scope.READ)
    finally:
        instrumentor.uninstrument()


def test_anthropic_sdk_instrumented_by_opentelemetry_reports_what_the_responses_said(
    pipeline: tuple[Settings, IngestProcess],
    instrumented: tuple[TracerProvider, InMemorySpanExporter, str],
) -> None:
    settings, _ = pipeline
    provider, memory, read = instrumented
    usages = [
        {
            "input_tokens": 1200,
            "output_tokens": 310,
            "cache_read_input_tokens": 0,
            "cache_creation_input_tokens": 5000,
        },
        {
            "input_tokens": 40,
            "output_tokens": 520,
            "cache_read_input_tokens": 5000,
            "cache_creation_input_tokens": 0,
        },
        {
            "input_tokens": 15,
            "output_tokens": 7,
            "cache_read_input_tokens": 5000,
            "cache_creation_input_tokens": 300,
        },
    ]
    replies = iter(usages)

    def reply(request: httpx2.Request) -> httpx2.Response:
        body = json.loads(request.content)
        return httpx2.Response(
            200,
            json={
                "id": f"msg_{uuid.uuid4().hex[:20]}",
                "type": "message",
                "role": "assistant",
                "model": body["model"],
                "content": [{"type": "text", "text": "ok"}],
                "stop_reason": "end_turn",
                "stop_sequence": None,
                "usage": next(replies),
            },
        )

    client = anthropic.Anthropic(
        api_key="test", http_client=httpx2.Client(transport=httpx2.MockTransport(reply))
    )
    _conversation.set("conv-42")
    for _ in usages:
        client.messages.create(
            model="claude-sonnet-5-5", max_tokens=1024, messages=[{"role": "user", "content": "hi"}]
        )
    assert provider.force_flush(10_000)
    spans = [
        s
        for s in memory.get_finished_spans()
        if s.attributes and "gen_ai.usage.output_tokens" in s.attributes
    ]
    assert len(spans) == len(usages)
    wait_for(lambda: totals(settings)["raw"][0] >= len(usages), 90, "the instrumented calls")
    stored = records(settings, read)
    for span, usage in zip(spans, usages, strict=True):
        got = stored[event_id(span)]
        assert got["source"] == "chat" and got["source_id"] == "conv-42"
        assert (
            got["input_tokens"],
            got["output_tokens"],
            got["cache_read_input_tokens"],
            got["cache_creation_input_tokens"],
        ) == (
            usage["input_tokens"],
            usage["output_tokens"],
            usage["cache_read_input_tokens"],
            usage["cache_creation_input_tokens"],
        )
        expected = UsageEvent(
            tenant_id="acme",
            occurred_at=datetime.now(UTC),
            source="chat",
            source_id="conv-42",
            model="claude-sonnet-5-5",
            **usage,
        )
        assert Decimal(got["cost_usd"]) == PRICE(expected)
    print(f"instrumented calls stored exactly: {[stored[event_id(s)]['cost_usd'] for s in spans]}")


def _otlp_json(request: Any) -> dict[str, Any]:
    """OTLP/JSON of a protobuf export: as protobuf's JSON mapping, but ids in hex."""
    body: dict[str, Any] = json_format.MessageToDict(request)
    for resource in body.get("resourceSpans", []):
        for scope in resource.get("scopeSpans", []):
            for span in scope.get("spans", []):
                for name in ("traceId", "spanId", "parentSpanId"):
                    if span.get(name):
                        span[name] = base64.b64decode(span[name]).hex()
    return body
