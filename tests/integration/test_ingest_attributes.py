"""Attributes through every way in, end to end: an instrumented Anthropic client (through the
publisher), ``POST /v1/events`` and OTLP ``/v1/traces`` (the OpenTelemetry SDK's exporter),
then the broker, a worker and ClickHouse; read back from ``usage_events`` call by call.
A bad attribute costs only its own event, with a reason naming it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from llm_usage.clickhouse import connect
from llm_usage.runner import IngestProcess
from llm_usage.settings import Settings
from producers.contract import uuid7
from producers.instrument import instrument, usage_attributes
from producers.publisher import SyncUsagePublisher
from query_api.keys import Scope
from stream_processor.harness import WorkerProcess
from tests.conftest import wait_for
from tests.integration.test_ingest_otlp import event_id
from tests.integration.test_processor_e2e import read_topic, worker_settings
from tests.unit.test_producers_instrument import ASK, sync_client

pytestmark = pytest.mark.integration


def stored_attributes(settings: Settings) -> dict[str, dict[str, str]]:
    """Every stored call's attributes, by event id."""
    client = connect(settings)
    try:
        rows = client.query("SELECT toString(event_id), attributes FROM usage_events").result_rows
    finally:
        client.close()
    return {event: dict(attributes) for event, attributes in rows}


def stored(settings: Settings, count: int) -> dict[str, dict[str, str]]:
    found: dict[str, dict[str, str]] = {}

    def enough() -> bool:
        found.update(stored_attributes(settings))
        return len(found) >= count

    wait_for(enough, 90, f"{count} stored calls")
    return found


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


def call(**fields: Any) -> dict[str, Any]:
    """A contract event as a service in another language posts it (no tenant: the key's)."""
    return {
        "event_id": str(uuid7()),
        "occurred_at": (datetime.now(UTC) - timedelta(minutes=5)).isoformat(),
        "source": "chat",
        "source_id": "conv-1",
        "model": "claude-sonnet-4-6",
        "input_tokens": 100,
        "output_tokens": 10,
        **fields,
    }


def test_attributes_from_every_way_in_are_stored_with_the_call(
    pipeline: tuple[Settings, IngestProcess], new_key: Callable[..., str]
) -> None:
    settings, ingest = pipeline
    key = new_key("acme", Scope.INGEST)

    # 1. POST /v1/events: attributes as the wire format documents them
    posted = [
        call(attributes={"user": "u-1", "customer": "globex", "environment": "production"}),
        call(attributes={"feature": "search", "prompt_version": "v7", "team.id": "t-3"}),
        call(),  # none: an empty map, the call counted as before
        call(attributes={"User": "u-2"}),  # a bad key: this event only is refused
        call(attributes={"user": 42}),  # not a string
        call(attributes={f"k{i}": "v" for i in range(17)}),  # too many
    ]
    answer = httpx.post(
        f"{ingest.base_url}/v1/events",
        content=json.dumps(posted),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        timeout=30,
    )
    assert answer.status_code == 202, answer.text
    body = answer.json()
    assert body["accepted"] == 3
    reasons = {r["index"]: r["reason"] for r in body["rejected"]}
    assert sorted(reasons) == [3, 4, 5]
    assert "attributes" in reasons[3] and "'User'" in reasons[3]
    assert "value of 'user' must be a string" in reasons[4]
    assert "at most 16" in reasons[5]

    # 2. OTLP: the OpenTelemetry SDK's exporter, attributes on spans and on the resource
    memory = InMemorySpanExporter()
    provider = TracerProvider(
        resource=Resource.create(
            {"service.name": "go-chat", "deployment.environment.name": "staging"}
        )
    )
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("test")
    model_call = {
        "gen_ai.operation.name": "chat",
        "gen_ai.request.model": "claude-haiku-4-5",
        "gen_ai.conversation.id": "conv-2",
        "gen_ai.usage.input_tokens": 50,
        "gen_ai.usage.output_tokens": 5,
    }
    spans_attributes = [
        {"enduser.id": "u-7", "session.id": "s-1", "llm_usage.attr.customer": "initech"},
        {"user.id": "u-8", "deployment.environment.name": "production"},  # span over resource
        {"llm_usage.attr.Customer": "bad"},  # rejected, named in partial_success
    ]
    for extra in spans_attributes:
        with tracer.start_as_current_span("chat claude-haiku-4-5") as span:
            span.set_attributes({**model_call, **extra})
    spans = memory.get_finished_spans()
    answer = httpx.post(
        f"{ingest.base_url}/v1/traces",
        content=encode_spans(spans).SerializeToString(),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/x-protobuf"},
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    partial = ExportTraceServiceResponse.FromString(answer.content).partial_success
    assert partial.rejected_spans == 1
    assert "span 2: llm_usage.attr.Customer: attribute key 'Customer'" in partial.error_message

    # 3. an instrumented Anthropic client, through the publisher (Kafka, no HTTP)
    with SyncUsagePublisher(settings) as publisher:
        client = instrument(
            sync_client(),
            publisher,
            tenant_id="acme",
            source="agent",
            source_id="agent-1",
            attributes={"environment": "production"},
        )
        with usage_attributes(feature="digest", customer="hooli"):
            client.messages.create(**ASK, **{"llm_usage_attributes": {"user": "u-9"}})
        publisher.flush()

    got = stored(settings, 3 + 2 + 1)
    assert len(got) == 6
    assert got[posted[0]["event_id"]] == posted[0]["attributes"]
    assert got[posted[1]["event_id"]] == posted[1]["attributes"]
    assert got[posted[2]["event_id"]] == {}
    assert got[event_id(spans[0])] == {
        "user": "u-7",
        "session": "s-1",
        "customer": "initech",
        "environment": "staging",  # from the resource
    }
    assert got[event_id(spans[1])] == {"user": "u-8", "environment": "production"}
    ids = {posted[i]["event_id"] for i in range(3)} | {event_id(s) for s in spans[:2]}
    (instrumented,) = (attrs for event, attrs in got.items() if event not in ids)
    assert instrumented == {
        "environment": "production",
        "feature": "digest",
        "customer": "hooli",
        "user": "u-9",
    }

    # the refused events went to the dead-letter topic, each with its reason
    letters = asyncio.run(read_topic(settings, settings.topic_dead_letter, 3))
    refused = {
        json.loads(r.value)["event_id"]: dict(r.headers)["x-dead-letter-reason"].decode()
        for r in letters
    }
    for index in (3, 4, 5):
        assert refused[posted[index]["event_id"]] == reasons[index]
