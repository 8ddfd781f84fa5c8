"""Instrumented Anthropic clients: the real SDK against realistic mocked API responses.

The SDK (anthropic 2.x) speaks HTTP through ``httpx2``; ``httpx2.MockTransport`` answers
with the JSON, SSE and (Message Batches results) JSONL bodies the API sends. Events go to an
in-memory sink here;
``tests/integration/test_producers_instrument.py`` sends them through Kafka.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import anthropic
import httpx2
import pytest

from producers.contract import ServiceTier, Source, Speed, Status, UsageEvent
from producers.instrument import (
    CALL_ATTRIBUTES_ARG,
    UNATTRIBUTED,
    BatchCustomId,
    UsageTags,
    batch_custom_id,
    batch_event_id,
    instrument,
    parse_batch_custom_id,
    usage_attributes,
    usage_context,
)

MODEL = "claude-sonnet-4-6"

MESSAGE_JSON: dict[str, Any] = {
    "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
    "type": "message",
    "role": "assistant",
    "model": MODEL,
    "content": [{"type": "text", "text": "Hello! How can I help you today?"}],
    "stop_reason": "end_turn",
    "stop_sequence": None,
    "usage": {
        "input_tokens": 2095,
        "output_tokens": 503,
        "cache_creation_input_tokens": 2051,
        "cache_read_input_tokens": 14000,
        "cache_creation": {"ephemeral_5m_input_tokens": 51, "ephemeral_1h_input_tokens": 2000},
        "server_tool_use": {"web_search_requests": 3, "web_fetch_requests": 1},
        "output_tokens_details": {"thinking_tokens": 120},
        "service_tier": "priority",
        "speed": "fast",
        "inference_geo": "us",
    },
}
# what MESSAGE_JSON bills beyond tokens: (tier, speed, geo, searches, fetches, thinking)
MESSAGE_BILLING = (ServiceTier.PRIORITY, Speed.FAST, "us", 3, 1, 120)
# the stream's: tier and geo from message_start, the counts from the last message_delta
STREAM_BILLING = (ServiceTier.PRIORITY, Speed.STANDARD, "global", 2, 1, 40)


def billing(event: UsageEvent) -> tuple[Any, ...]:
    return (
        event.service_tier,
        event.speed,
        event.inference_geo,
        event.web_search_requests,
        event.web_fetch_requests,
        event.thinking_tokens,
    )


def sse(events: list[tuple[str, dict[str, Any]]]) -> bytes:
    return b"".join(
        f"event: {name}\ndata: {json.dumps(data)}\n\n".encode() for name, data in events
    )


def stream_events(
    *, error_after_start: bool = False, usage: dict[str, Any] | None = None
) -> list[tuple[str, dict[str, Any]]]:
    start_usage = {
        "input_tokens": 472,
        "output_tokens": 2,
        "cache_creation_input_tokens": 1200,
        "cache_read_input_tokens": 3000,
        "cache_creation": {"ephemeral_5m_input_tokens": 1200, "ephemeral_1h_input_tokens": 0},
        "server_tool_use": {"web_search_requests": 0, "web_fetch_requests": 0},
        "service_tier": "priority",
        "speed": "standard",
        "inference_geo": "global",
        **(usage or {}),
    }
    message = {**MESSAGE_JSON, "content": [], "stop_reason": None, "usage": start_usage}
    events: list[tuple[str, dict[str, Any]]] = [
        ("message_start", {"type": "message_start", "message": message}),
        (
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
        ),
        ("ping", {"type": "ping"}),
    ]
    if error_after_start:
        return [
            *events,
            (
                "error",
                {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
            ),
        ]
    return [
        *events,
        (
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": "Hi"},
            },
        ),
        (
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": " there"},
            },
        ),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": 50, "output_tokens_details": {"thinking_tokens": 30}},
            },
        ),
        (
            "message_delta",  # usage in a delta is cumulative: the last one is the total
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {
                    "input_tokens": 472,
                    "output_tokens": 89,
                    "cache_creation_input_tokens": 1200,
                    "cache_read_input_tokens": 3000,
                    "server_tool_use": {"web_search_requests": 2, "web_fetch_requests": 1},
                    "output_tokens_details": {"thinking_tokens": 40},
                },
            },
        ),
        ("message_stop", {"type": "message_stop"}),
    ]


BATCH_ID = "msgbatch_01HkcTjaV5uDC8jWR4ZsDV8d"
BATCH_ENDED_AT = (datetime.now(UTC) - timedelta(hours=2)).replace(microsecond=435000)
BATCH_CREATED_AT = BATCH_ENDED_AT - timedelta(minutes=25)


def batch_json(batch_id: str = BATCH_ID) -> dict[str, Any]:
    """``GET /v1/messages/batches/{id}`` of an ended batch, as the API answers it."""
    return {
        "id": batch_id,
        "type": "message_batch",
        "processing_status": "ended",
        "request_counts": {
            "processing": 0,
            "succeeded": 3,
            "errored": 1,
            "canceled": 1,
            "expired": 1,
        },
        "created_at": BATCH_CREATED_AT.isoformat().replace("+00:00", "Z"),
        "ended_at": BATCH_ENDED_AT.isoformat().replace("+00:00", "Z"),
        "expires_at": (BATCH_CREATED_AT + timedelta(days=1)).isoformat().replace("+00:00", "Z"),
        "archived_at": None,
        "cancel_initiated_at": None,
        "results_url": f"https://api.anthropic.com/v1/messages/batches/{batch_id}/results",
    }


def batch_message(msg_id: str, model: str, **usage: Any) -> dict[str, Any]:
    return {
        **MESSAGE_JSON,
        "id": msg_id,
        "model": model,
        "usage": {
            "input_tokens": 1000,
            "output_tokens": 200,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            **usage,
        },
    }


BATCH_LINES: list[dict[str, Any]] = [  # results are not in request order
    {
        "custom_id": "memory__conv-42__1",
        "result": {
            "type": "succeeded",
            "message": batch_message(
                "msg_b1",
                "claude-haiku-4-5",
                service_tier="batch",
                output_tokens_details={"thinking_tokens": 50},
                inference_geo="global",
            ),
        },
    },
    {
        "custom_id": "memory__conv-43__0",
        "result": {
            "type": "errored",
            "error": {
                "type": "error",
                "error": {"type": "invalid_request_error", "message": "max_tokens: too large"},
            },
        },
    },
    {  # no service_tier in usage: a batch result is still billed at the batch tier
        "custom_id": "memory__conv-42__0",
        "result": {"type": "succeeded", "message": batch_message("msg_b0", MODEL)},
    },
    {"custom_id": "memory__conv-44__0", "result": {"type": "expired"}},
    {"custom_id": "memory__conv-45__0", "result": {"type": "canceled"}},
    {  # not the batch_custom_id convention
        "custom_id": "nightly-digest-7",
        "result": {
            "type": "succeeded",
            "message": batch_message("msg_b2", MODEL, service_tier="batch", input_tokens=10),
        },
    },
]


def jsonl(lines: list[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


def handler(
    *,
    status: int = 200,
    error_stream: bool = False,
    usage: dict[str, Any] | None = None,
    batch_lines: list[dict[str, Any]] | None = None,
    seen: list[str] | None = None,
) -> Callable[[httpx2.Request], httpx2.Response]:
    """The Messages API: ``usage`` overrides the usage of every reply, ``seen`` logs paths."""

    def handle(request: httpx2.Request) -> httpx2.Response:
        path = request.url.path
        if seen is not None:
            seen.append(f"{request.method} {path}")
        if path == "/v1/messages/count_tokens":  # not a billed call
            return httpx2.Response(200, json={"input_tokens": 12})
        if path.startswith("/v1/messages/batches/"):
            return batches(request)
        assert path == "/v1/messages"
        body = json.loads(request.content)
        if status != 200:
            return httpx2.Response(
                status,
                headers={"request-id": "req_err_1"},
                json={
                    "type": "error",
                    "error": {"type": "overloaded_error", "message": "Overloaded"},
                },
            )
        if body.get("stream"):
            return httpx2.Response(
                200,
                headers={"content-type": "text/event-stream", "request-id": "req_stream_1"},
                content=sse(stream_events(error_after_start=error_stream, usage=usage)),
            )
        message = {**MESSAGE_JSON, "usage": {**MESSAGE_JSON["usage"], **(usage or {})}}
        return httpx2.Response(200, headers={"request-id": "req_msg_1"}, json=message)

    def batches(request: httpx2.Request) -> httpx2.Response:
        assert request.method == "GET"
        batch_id = request.url.path.split("/")[4]
        if request.url.path.endswith("/results"):
            return httpx2.Response(
                200,
                headers={"content-type": "application/binary", "request-id": "req_results"},
                content=jsonl(BATCH_LINES if batch_lines is None else batch_lines),
            )
        return httpx2.Response(200, headers={"request-id": "req_batch"}, json=batch_json(batch_id))

    return handle


class Sink:
    def __init__(self) -> None:
        self.events: list[UsageEvent] = []

    def publish(self, event: UsageEvent) -> None:
        self.events.append(event)


class AsyncSink(Sink):
    async def publish(self, event: UsageEvent) -> None:  # type: ignore[override]
        self.events.append(event)


def sync_client(**kw: Any) -> anthropic.Anthropic:
    transport = httpx2.MockTransport(handler(**kw))
    return anthropic.Anthropic(
        api_key="sk-test", max_retries=0, http_client=httpx2.Client(transport=transport)
    )


def async_client(**kw: Any) -> anthropic.AsyncAnthropic:
    transport = httpx2.MockTransport(handler(**kw))
    return anthropic.AsyncAnthropic(
        api_key="sk-test", max_retries=0, http_client=httpx2.AsyncClient(transport=transport)
    )


ASK: dict[str, Any] = {
    "model": MODEL,
    "max_tokens": 1024,
    "messages": [{"role": "user", "content": "Hello"}],
}


def test_create_publishes_the_usage_block_and_returns_the_sdk_message() -> None:
    sink = Sink()
    client = instrument(sync_client(), sink, tenant_id="acme", source="chat", source_id="conv-1")
    assert type(client) is anthropic.Anthropic
    message = client.messages.create(**ASK)
    assert isinstance(message, anthropic.types.Message)
    assert message.content[0].text == "Hello! How can I help you today?"  # type: ignore[union-attr]
    assert message._request_id == "req_msg_1"
    (event,) = sink.events
    assert (event.tenant_id, event.source, event.source_id) == ("acme", Source.CHAT, "conv-1")
    assert event.model == MODEL and event.status is Status.OK
    assert (event.input_tokens, event.output_tokens) == (2095, 503)
    assert event.cache_creation_input_tokens == 2051
    assert (event.cache_creation_5m_input_tokens, event.cache_creation_1h_input_tokens) == (
        51,
        2000,
    )
    assert event.cache_read_input_tokens == 14000
    assert event.request_id == "req_msg_1"
    assert event.metadata["stop_reason"] == "end_turn" and event.metadata["stream"] is False
    assert event.duration_ms >= 0 and event.event_id.version == 7
    assert billing(event) == MESSAGE_BILLING and event.schema_version == 2
    assert "service_tier" not in event.metadata  # a contract field now, not metadata


def test_usage_context_overrides_defaults_per_call() -> None:
    sink = Sink()
    client = instrument(
        sync_client(), sink, tenant_id="acme", source="agent", metadata={"svc": "a"}
    )
    with usage_context(source_id="agent-7", source_name="Researcher", metadata={"run": 3}):
        client.messages.create(**ASK)
        with usage_context(tenant_id="globex"):
            client.messages.create(**ASK)
    client.messages.create(**ASK)
    first, second, third = sink.events
    assert (first.tenant_id, first.source_id, first.source_name) == (
        "acme",
        "agent-7",
        "Researcher",
    )
    assert first.metadata["svc"] == "a" and first.metadata["run"] == 3
    assert (second.tenant_id, second.source_id) == ("globex", "agent-7")
    assert third.source_id == UNATTRIBUTED and third.source_name is None


def test_messages_stream_publishes_the_final_usage_once() -> None:
    sink = Sink()
    client = instrument(sync_client(), sink, tenant_id="acme", source="chat", source_id="c2")
    with client.messages.stream(**ASK) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "Hi there"
    assert final.usage.output_tokens == 89
    (event,) = sink.events
    assert (event.input_tokens, event.output_tokens) == (472, 89)
    assert event.cache_creation_input_tokens == 1200 and event.cache_read_input_tokens == 3000
    assert event.request_id == "req_stream_1" and event.metadata["stream"] is True
    assert "incomplete" not in event.metadata
    assert billing(event) == STREAM_BILLING


def test_create_stream_true_raw_events_are_passed_through_unchanged() -> None:
    sink = Sink()
    client = instrument(sync_client(), sink, tenant_id="acme", source="memory", source_id="m1")
    plain = sync_client().messages.create(**ASK, stream=True)
    wrapped = client.messages.create(**ASK, stream=True)
    assert type(wrapped) is type(plain)
    assert [e.to_dict() for e in wrapped] == [e.to_dict() for e in plain]
    (event,) = sink.events
    assert event.output_tokens == 89 and event.source is Source.MEMORY
    assert billing(event) == STREAM_BILLING


def test_a_stream_closed_early_still_publishes_what_was_billed() -> None:
    sink = Sink()
    client = instrument(sync_client(), sink, tenant_id="acme", source="chat", source_id="c3")
    with client.messages.stream(**ASK) as stream:
        next(iter(stream))  # message_start only
    (event,) = sink.events
    assert event.input_tokens == 472 and event.metadata.get("incomplete") is True
    # message_start reports no thinking tokens: not reported (None), not zero
    assert billing(event) == (ServiceTier.PRIORITY, Speed.STANDARD, "global", 0, 0, None)


def test_http_errors_publish_status_error_and_reraise() -> None:
    sink = Sink()
    client = instrument(
        sync_client(status=529), sink, tenant_id="acme", source="chat", source_id="c4"
    )
    with pytest.raises(anthropic.APIStatusError) as info:
        client.messages.create(**ASK)
    assert info.value.status_code == 529
    (event,) = sink.events
    assert event.status is Status.ERROR and event.request_id == "req_err_1"
    assert event.metadata["http_status"] == 529 and event.input_tokens == 0


def test_an_error_mid_stream_publishes_the_tokens_reported_before_it() -> None:
    sink = Sink()
    client = instrument(
        sync_client(error_stream=True), sink, tenant_id="acme", source="chat", source_id="c5"
    )
    with pytest.raises(anthropic.APIStatusError), client.messages.stream(**ASK) as stream:
        stream.until_done()
    (event,) = sink.events
    assert event.status is Status.ERROR and event.input_tokens == 472
    assert event.cache_read_input_tokens == 3000 and event.request_id == "req_stream_1"


def test_raw_response_copies_and_untouched_endpoints() -> None:
    sink = Sink()
    client = instrument(sync_client(), sink, tenant_id="acme", source="chat", source_id="c6")
    raw = client.messages.with_raw_response.create(**ASK)
    assert raw.parse().usage.input_tokens == 2095
    assert raw.headers["request-id"] == "req_msg_1"
    copy = client.with_options(timeout=5)
    assert copy is not client and type(copy) is anthropic.Anthropic
    copy.messages.create(**ASK)
    assert [e.request_id for e in sink.events] == ["req_msg_1", "req_msg_1"]
    with pytest.raises(ValueError, match="already instrumented"):
        instrument(client, sink)


def test_beta_messages_are_instrumented_too() -> None:
    sink = Sink()
    client = instrument(sync_client(), sink, tenant_id="acme", source="agent", source_id="a9")
    message = client.beta.messages.create(**ASK, betas=["context-management-2025-06-27"])
    assert type(message).__name__ == "BetaMessage"
    with client.beta.messages.stream(**ASK) as stream:
        stream.until_done()
    assert client.messages.count_tokens(model=MODEL, messages=ASK["messages"]).input_tokens == 12
    created, streamed = sink.events  # count_tokens published nothing
    assert (created.input_tokens, created.cache_creation_1h_input_tokens) == (2095, 2000)
    assert (streamed.output_tokens, streamed.metadata["stream"]) == (89, True)
    assert billing(created) == MESSAGE_BILLING and billing(streamed) == STREAM_BILLING


def test_missing_attribution_is_logged_never_raised(caplog: pytest.LogCaptureFixture) -> None:
    sink = Sink()
    client = instrument(sync_client(), sink)
    assert client.messages.create(**ASK).usage.output_tokens == 503
    assert sink.events == [] and "no tenant_id/source" in caplog.text


def test_a_failing_publisher_never_breaks_the_call(caplog: pytest.LogCaptureFixture) -> None:
    class Broken:
        def publish(self, event: UsageEvent) -> None:
            raise RuntimeError("kafka on fire")

    client = instrument(sync_client(), Broken(), tenant_id="acme", source="chat", source_id="x")
    assert client.messages.create(**ASK).id == MESSAGE_JSON["id"]
    assert "could not publish a usage event" in caplog.text


def test_sync_client_refuses_an_async_publisher() -> None:
    with pytest.raises(TypeError, match="SyncUsagePublisher"):
        instrument(sync_client(), AsyncSink(), tenant_id="acme", source="chat")


def test_async_client_create_stream_and_errors() -> None:
    async def main() -> list[UsageEvent]:
        sink = AsyncSink()
        client = instrument(async_client(), sink, tenant_id="acme", source="agent", source_id="a1")
        assert type(client) is anthropic.AsyncAnthropic
        message = await client.messages.create(**ASK)
        assert message.usage.input_tokens == 2095
        async with client.messages.stream(**ASK) as stream:
            async for _ in stream:
                pass
            final = await stream.get_final_message()
        assert final.usage.output_tokens == 89
        raw_stream = await client.messages.create(**ASK, stream=True)
        assert len([e async for e in raw_stream]) == 8
        await client.beta.messages.create(**ASK)
        failing = instrument(async_client(status=429), sink, tenant_id="acme", source="agent")
        with pytest.raises(anthropic.RateLimitError):
            await failing.messages.create(**ASK)
        return sink.events

    created, streamed, raw, beta, failed = asyncio.run(main())
    assert created.output_tokens == 503 and created.metadata["stream"] is False
    assert streamed.output_tokens == 89 and streamed.request_id == "req_stream_1"
    assert raw.output_tokens == 89
    assert billing(created) == billing(beta) == MESSAGE_BILLING
    assert billing(streamed) == billing(raw) == STREAM_BILLING
    assert failed.status is Status.ERROR and failed.metadata["http_status"] == 429
    # no usage at all: the instrument's default tier, every other dimension not reported
    assert billing(failed) == (ServiceTier.STANDARD, None, None, None, None, None)


def test_async_tasks_keep_their_own_tags() -> None:
    async def main() -> list[UsageEvent]:
        sink = AsyncSink()
        client = instrument(async_client(), sink, tenant_id="acme", source="chat")

        async def conversation(cid: str) -> None:
            with usage_context(source_id=cid):
                await asyncio.sleep(0)
                await client.messages.create(**ASK)

        await asyncio.gather(*(conversation(f"conv-{i}") for i in range(5)))
        return sink.events

    assert sorted(e.source_id for e in asyncio.run(main())) == [f"conv-{i}" for i in range(5)]


# --- billing dimensions the contract does not know ------------------------------------------
FUTURE_USAGE = {
    "service_tier": "flex",
    "speed": "ludicrous",
    "inference_geo": "eu-west-sovereign-cloud-region-number-1",  # longer than the contract allows
    "output_tokens_details": {"thinking_tokens": 9999},  # more than output_tokens
}


def test_values_from_a_newer_api_keep_the_call_with_the_raw_value_in_metadata(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sink = Sink()
    client = instrument(
        sync_client(usage=FUTURE_USAGE), sink, tenant_id="acme", source="chat", source_id="c7"
    )
    with caplog.at_level(logging.WARNING, logger="producers.instrument"):
        client.messages.create(**ASK)
        with client.messages.stream(**ASK) as stream:
            stream.until_done()
    created, streamed = sink.events
    for event in (created, streamed):
        # demoted: the instrument's default tier, and speed not reported (standard)
        assert (event.service_tier, event.speed) == (ServiceTier.STANDARD, None)
        assert event.inference_geo is None
        assert event.metadata["service_tier_raw"] == "flex"
        assert event.metadata["speed_raw"] == "ludicrous"
        assert event.metadata["inference_geo_raw"] == FUTURE_USAGE["inference_geo"]
        assert "service_tier" not in event.metadata
    assert (created.input_tokens, created.output_tokens, created.web_search_requests) == (
        2095,
        503,
        3,
    )
    assert created.thinking_tokens is None and created.metadata["thinking_tokens_raw"] == 9999
    # the stream's last delta reports 40 of 89: the later total replaces the start's 9999
    assert streamed.thinking_tokens == 40 and "thinking_tokens_raw" not in streamed.metadata
    assert "service_tier='flex' is not accepted by the event contract" in caplog.text


def test_the_raw_value_does_not_duplicate_an_accepted_one() -> None:
    sink = Sink()
    client = instrument(sync_client(), sink, tenant_id="acme", source="chat", source_id="c8")
    client.messages.create(**ASK)
    (event,) = sink.events
    assert not [k for k in event.metadata if k.endswith("_raw")]


# --- Message Batches ---------------------------------------------------------------------------
def test_batch_custom_id_round_trips_and_refuses_what_the_api_would() -> None:
    assert batch_custom_id("memory", "conv-42", 0) == "memory__conv-42__0"
    assert batch_custom_id(Source.AGENT, "a__b_", 12) == "agent__a__b___12"
    for custom_id in ("memory__conv-42__0", "agent__a__b___12", "chat___x__3"):
        parsed = parse_batch_custom_id(custom_id)
        assert parsed is not None
        assert batch_custom_id(parsed.source, parsed.source_id, parsed.index) == custom_id
    assert parse_batch_custom_id("agent__a__b___12") == BatchCustomId(Source.AGENT, "a__b_", 12)
    for foreign in ("nightly-digest-7", "memory__x", "billing__x__1", "memory____1", "chat__x__1a"):
        assert parse_batch_custom_id(foreign) is None
    with pytest.raises(ValueError, match="characters"):
        batch_custom_id("memory", "conv:42", 0)  # the API allows no colons
    with pytest.raises(ValueError, match="longer than 64"):
        batch_custom_id("memory", "x" * 60, 0)
    with pytest.raises(ValueError, match="index"):
        batch_custom_id("memory", "conv-42", -1)
    with pytest.raises(ValueError):
        batch_custom_id("billing", "conv-42", 0)


def test_batch_event_ids_are_uuid7_shaped_and_a_pure_function_of_the_request() -> None:
    first = batch_event_id(BATCH_ID, "memory__conv-42__0", BATCH_ENDED_AT)
    assert first == batch_event_id(BATCH_ID, "memory__conv-42__0", BATCH_ENDED_AT)
    assert first.version == 7 and first.variant == "specified in RFC 4122"
    assert first.int >> 80 == int(BATCH_ENDED_AT.timestamp() * 1000)
    assert first != batch_event_id(BATCH_ID, "memory__conv-42__1", BATCH_ENDED_AT)
    assert first != batch_event_id("msgbatch_other", "memory__conv-42__0", BATCH_ENDED_AT)
    undated = batch_event_id(BATCH_ID, "memory__conv-42__0", None)
    assert undated == batch_event_id(BATCH_ID, "memory__conv-42__0", None) and undated.version == 7


def check_batch_events(events: list[UsageEvent], tenant: str = "acme") -> None:
    """The three succeeded results of BATCH_LINES, in file order; nothing for the others."""
    one, zero, foreign = events
    assert [e.metadata["custom_id"] for e in events] == [
        "memory__conv-42__1",
        "memory__conv-42__0",
        "nightly-digest-7",
    ]
    for event in events:
        assert event.tenant_id == tenant and event.status is Status.OK
        assert event.service_tier is ServiceTier.BATCH and event.metadata["batch_id"] == BATCH_ID
        assert event.occurred_at == BATCH_ENDED_AT and event.duration_ms == 0
        assert event.event_id == batch_event_id(
            BATCH_ID, str(event.metadata["custom_id"]), BATCH_ENDED_AT
        )
        assert "service_tier" not in event.metadata
    assert (one.source, one.source_id, one.model) == (Source.MEMORY, "conv-42", "claude-haiku-4-5")
    assert (one.input_tokens, one.output_tokens, one.thinking_tokens) == (1000, 200, 50)
    assert one.inference_geo == "global"
    assert (zero.source, zero.source_id, zero.model) == (Source.MEMORY, "conv-42", MODEL)
    assert foreign.input_tokens == 10 and foreign.metadata["stop_reason"] == "end_turn"


def test_batch_results_publish_one_event_per_succeeded_result(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sink, seen = Sink(), list[str]()
    client = instrument(
        sync_client(seen=seen), sink, tenant_id="acme", source="agent", metadata={"svc": "m"}
    )
    with caplog.at_level(logging.INFO, logger="producers.instrument"):
        results = list(client.messages.batches.results(BATCH_ID))
    assert [r.result.type for r in results] == [line["result"]["type"] for line in BATCH_LINES]
    assert isinstance(results[0].result, anthropic.types.messages.MessageBatchSucceededResult)
    assert seen == [  # one retrieve (the SDK's own, for results_url), then the file
        f"GET /v1/messages/batches/{BATCH_ID}",
        f"GET /v1/messages/batches/{BATCH_ID}/results",
    ]
    check_batch_events(sink.events)
    foreign = sink.events[2]  # attributed with the instrument() tags, custom_id kept
    assert (foreign.source, foreign.source_id) == (Source.AGENT, UNATTRIBUTED)
    assert foreign.metadata["svc"] == "m"
    assert "3 succeeded results published" in caplog.text
    assert "{'canceled': 1, 'errored': 1, 'expired': 1}" in caplog.text


def test_reading_batch_results_twice_gives_the_same_event_ids() -> None:
    sink = Sink()
    client = instrument(sync_client(), sink, tenant_id="acme", source="memory")
    for _ in client.messages.batches.results(BATCH_ID):
        pass
    first = [e.event_id for e in sink.events]
    decoder = client.messages.batches.results(message_batch_id=BATCH_ID)
    assert next(decoder).custom_id == "memory__conv-42__1"  # also when read with next()
    for _ in decoder:
        pass
    assert [e.event_id for e in sink.events[3:]] == first and len(set(first)) == 3


def test_beta_batch_results_and_usage_context_at_read_time() -> None:
    sink = Sink()
    client = instrument(sync_client(), sink, source="memory")
    with usage_context(tenant_id="globex", source_id="nightly"):
        decoder = client.beta.messages.batches.results(BATCH_ID)
    results = list(decoder)  # read outside the block: the tags of the results() call hold
    assert type(results[0]).__name__ == "BetaMessageBatchIndividualResponse"
    check_batch_events(sink.events, tenant="globex")
    assert sink.events[2].source_id == "nightly"


def test_batch_attribution_overrides_the_custom_id_convention(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def attribution(custom_id: str) -> UsageTags | None:
        if custom_id.startswith("nightly-digest-"):
            return UsageTags(source="agent", source_id="digest-agent", source_name="Digest")
        if custom_id == "memory__conv-42__0":
            raise RuntimeError("lookup failed")  # logged; the result keeps the default tags
        return None

    sink = Sink()
    client = instrument(
        sync_client(), sink, tenant_id="acme", source="memory", batch_attribution=attribution
    )
    for _ in client.messages.batches.results(BATCH_ID):
        pass
    one, zero, foreign = sink.events
    assert (foreign.source, foreign.source_id, foreign.source_name) == (
        Source.AGENT,
        "digest-agent",
        "Digest",
    )
    assert (one.source, one.source_id) == (Source.MEMORY, UNATTRIBUTED)  # None: not parsed
    assert zero.source_id == UNATTRIBUTED and "batch_attribution failed" in caplog.text
    copy = client.with_options(timeout=5)  # copies keep the attribution
    for _ in copy.messages.batches.results(BATCH_ID):
        pass
    assert sink.events[5].source_id == "digest-agent"


def test_a_batch_result_reporting_another_tier_is_published_at_batch() -> None:
    """A batch result is billed at batch prices whatever its usage says; what it said is
    kept in metadata (and nothing is added when it says batch or nothing)."""
    lines = [
        {
            "custom_id": "memory__conv-50__0",
            "result": {
                "type": "succeeded",
                "message": batch_message("msg_s0", MODEL, service_tier="standard"),
            },
        },
        *BATCH_LINES,
    ]
    sink = Sink()
    client = instrument(sync_client(batch_lines=lines), sink, tenant_id="acme", source="memory")
    assert len(list(client.messages.batches.results(BATCH_ID))) == len(lines)
    reported, *regular = sink.events
    assert reported.metadata["custom_id"] == "memory__conv-50__0"
    assert reported.service_tier is ServiceTier.BATCH
    assert reported.metadata["service_tier_reported"] == "standard"
    assert "service_tier" not in reported.metadata and "service_tier_raw" not in reported.metadata
    wire = json.loads(reported.to_json())
    assert wire["service_tier"] == "batch"
    assert wire["metadata"]["service_tier_reported"] == "standard"
    check_batch_events(regular)
    assert not [e for e in regular if "service_tier_reported" in e.metadata]


def test_batch_results_through_raw_response() -> None:
    sink = Sink()
    client = instrument(sync_client(), sink, tenant_id="acme", source="agent")
    raw = client.messages.batches.with_raw_response.results(BATCH_ID)
    assert raw.headers["request-id"] == "req_results"
    assert len(list(raw.parse())) == len(BATCH_LINES)
    check_batch_events(sink.events)
    with client.messages.batches.with_streaming_response.results(BATCH_ID) as streaming:
        assert len(list(streaming.iter_lines())) == len(BATCH_LINES)
    assert len(sink.events) == 3  # a streamed body is the caller's to read: not recorded


def test_batch_results_without_a_tenant_are_logged_not_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sink = Sink()
    client = instrument(sync_client(), sink)
    assert len(list(client.messages.batches.results(BATCH_ID))) == len(BATCH_LINES)
    assert sink.events == [] and "no tenant_id/source" in caplog.text


def test_async_batch_results_regular_and_beta() -> None:
    async def main() -> tuple[list[UsageEvent], list[UsageEvent]]:
        regular, beta = AsyncSink(), AsyncSink()
        client = instrument(async_client(), regular, tenant_id="acme", source="agent")
        types = [r.result.type async for r in await client.messages.batches.results(BATCH_ID)]
        assert types == [line["result"]["type"] for line in BATCH_LINES]
        again = await client.messages.batches.results(BATCH_ID)
        assert (await again.__anext__()).custom_id == "memory__conv-42__1"
        async for _ in again:
            pass
        other = instrument(async_client(), beta, tenant_id="acme", source="agent")
        async for _ in await other.beta.messages.batches.results(BATCH_ID):
            pass
        raw = await other.messages.batches.with_raw_response.results(BATCH_ID)
        async for _ in await raw.parse():
            pass
        return regular.events, beta.events

    regular, beta = asyncio.run(main())
    check_batch_events(regular[:3])
    assert [e.event_id for e in regular[3:]] == [e.event_id for e in regular[:3]]
    check_batch_events(beta[:3])
    assert [e.event_id for e in beta] == [e.event_id for e in regular[:3]] * 2


def test_other_batch_endpoints_are_untouched() -> None:
    sink = Sink()
    client = instrument(sync_client(), sink, tenant_id="acme", source="memory")
    batch = client.messages.batches.retrieve(BATCH_ID)
    assert batch.ended_at == BATCH_ENDED_AT and batch.request_counts.succeeded == 3
    raw = client.messages.batches.with_raw_response.retrieve(BATCH_ID)
    assert raw.parse().id == BATCH_ID
    assert sink.events == []


# --- attributes: client-wide, per block, per call ---------------------------------------------
def at(attributes: Any) -> dict[str, Any]:
    """``llm_usage_attributes=attributes`` for a call (``**at(...)``): an argument the SDK's
    typed signatures do not have: spelt out, a type checker wants ``# type: ignore``."""
    return {CALL_ATTRIBUTES_ARG: attributes}


def recording_client(sent: list[httpx2.Request], *, asynchronous: bool = False) -> Any:
    """A client whose requests are kept (to prove the attributes never reach the API)."""
    inner = handler()

    def handle(request: httpx2.Request) -> httpx2.Response:
        sent.append(request)
        return inner(request)

    transport = httpx2.MockTransport(handle)
    if asynchronous:
        return anthropic.AsyncAnthropic(
            api_key="sk-test", max_retries=0, http_client=httpx2.AsyncClient(transport=transport)
        )
    return anthropic.Anthropic(
        api_key="sk-test", max_retries=0, http_client=httpx2.Client(transport=transport)
    )


def nothing_of_ours_was_sent(sent: list[httpx2.Request]) -> None:
    assert sent
    for request in sent:
        assert "llm-usage" not in " ".join(request.headers.keys()).lower()
        assert b"llm_usage" not in request.content


def test_attributes_from_instrument_blocks_and_the_call_merge_the_nearest_winning() -> None:
    sink, sent = Sink(), list[httpx2.Request]()
    client = instrument(
        recording_client(sent),
        sink,
        tenant_id="acme",
        source="chat",
        source_id="c1",
        attributes={"environment": "production", "customer": "globex"},
    )
    assert isinstance(client, anthropic.Anthropic)
    client.messages.create(**ASK)
    with usage_attributes(user="u-1", feature="search") as inside:
        assert inside == {"user": "u-1", "feature": "search"}  # the blocks' (not the client's)
        with usage_attributes({"user": "u-2", "team.id": "t7"}):
            client.messages.create(**ASK)
            client.messages.create(**ASK, **at({"user": "u-3", "session": "s9"}))
        client.messages.create(**ASK)
    staging = {"environment": "staging"}
    client.messages.create(**ASK, llm_usage_attributes=staging)  # type: ignore[call-overload]
    plain, nested, per_call, outer, override = (e.attributes for e in sink.events)
    assert plain == {"environment": "production", "customer": "globex"}
    assert nested == {**plain, "user": "u-2", "feature": "search", "team.id": "t7"}
    assert per_call == {**nested, "user": "u-3", "session": "s9"}
    assert outer == {**plain, "user": "u-1", "feature": "search"}
    assert override == {"environment": "staging", "customer": "globex"}
    nothing_of_ours_was_sent(sent)
    # on the wire, as the contract says; a call without attributes leaves the field out
    assert json.loads(sink.events[0].to_json())["attributes"] == plain
    bare = instrument(sync_client(), sink, tenant_id="acme", source="chat")
    bare.messages.create(**ASK)
    assert sink.events[-1].attributes == {} and "attributes" not in json.loads(
        sink.events[-1].to_json()
    )


def test_per_call_attributes_on_every_way_to_call_the_messages_api() -> None:
    sink, sent = Sink(), list[httpx2.Request]()
    client = instrument(recording_client(sent), sink, tenant_id="acme", source="agent")
    assert isinstance(client, anthropic.Anthropic)
    attrs = at({"feature": "digest"})
    with client.messages.stream(**ASK, **at({"feature": "stream"})) as stream:
        stream.until_done()
    for _ in client.messages.create(**ASK, stream=True, **at({"feature": "sse"})):
        pass
    client.messages.with_raw_response.create(**ASK, **attrs).parse()
    with client.messages.with_streaming_response.create(**ASK, **attrs) as response:
        response.read()
    client.messages.parse(**ASK, **at({"feature": "parse"}))
    client.beta.messages.create(**ASK, **at({"feature": "beta"}))
    with client.beta.messages.stream(**ASK, **at({"feature": "beta-stream"})) as s:
        s.until_done()
    client.with_options(timeout=5).messages.create(**ASK, **at({"feature": "copy"}))
    features = [e.attributes.get("feature") for e in sink.events]
    # with_streaming_response: the body is the caller's to read, so it is not recorded
    assert features == ["stream", "sse", "digest", "parse", "beta", "beta-stream", "copy"]
    nothing_of_ours_was_sent(sent)


def test_async_and_streaming_calls_see_their_own_blocks_and_arguments() -> None:
    async def main() -> list[UsageEvent]:
        sink, sent = AsyncSink(), list[httpx2.Request]()
        client = instrument(
            recording_client(sent, asynchronous=True),
            sink,
            tenant_id="acme",
            source="chat",
            attributes={"environment": "production"},
        )
        assert isinstance(client, anthropic.AsyncAnthropic)

        async def conversation(user: str) -> None:
            with usage_attributes(user=user):
                await asyncio.sleep(0)
                await client.messages.create(**ASK)
                async with client.messages.stream(**ASK) as stream:
                    async for _ in stream:
                        await asyncio.sleep(0)

        await asyncio.gather(*(conversation(f"u-{i}") for i in range(4)))
        raw = await client.messages.create(**ASK, stream=True, **at({"user": "sse"}))
        async for _ in raw:
            pass
        await client.messages.with_raw_response.create(**ASK, **at({"user": "r"}))
        await client.beta.messages.create(**ASK, **at({"user": "beta"}))
        nothing_of_ours_was_sent(sent)
        return sink.events

    events = asyncio.run(main())
    users = Counter(e.attributes["user"] for e in events)
    assert users == {"u-0": 2, "u-1": 2, "u-2": 2, "u-3": 2, "sse": 1, "r": 1, "beta": 1}
    assert all(e.attributes["environment"] == "production" for e in events)


def test_bad_attributes_fail_at_instrument_only_at_start_up() -> None:
    with pytest.raises(ValueError, match=r"instrument: attributes: key 'User' must match"):
        instrument(sync_client(), Sink(), tenant_id="acme", attributes={"User": "x"})
    with pytest.raises(ValueError, match=r"value of attribute 'user' must be a string, not int"):
        instrument(sync_client(), Sink(), attributes={"user": 42})  # type: ignore[dict-item]
    too_long = r"value of 'user' must be 1 to 256 characters"
    with pytest.raises(ValueError, match=too_long):
        instrument(sync_client(), Sink(), attributes={"user": "x" * 257})
    with pytest.raises(ValueError, match=too_long):
        instrument(sync_client(), Sink(), attributes={"user": "   "})  # blank once stripped
    with pytest.raises(ValueError, match="at most 16"):
        instrument(sync_client(), Sink(), attributes={f"k{i}": "v" for i in range(17)})
    # a key must match the rule as given: nothing is stripped from it (the contract's rule)
    for key in (" user", "user ", "user\n", "\tuser"):
        with pytest.raises(ValueError, match=rf"key {re.escape(repr(key))} must match"):
            instrument(sync_client(), Sink(), attributes={key: "x"})
    # a value is stripped, as the contract strips it
    sink = Sink()
    client = instrument(
        sync_client(), sink, tenant_id="a", source="chat", attributes={"user": " u "}
    )
    client.messages.create(**ASK)
    assert sink.events[0].attributes == {"user": "u"}


def test_bad_attributes_of_a_block_or_a_call_never_break_the_call(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sink = Sink()
    client = instrument(sync_client(), sink, tenant_id="acme", source="chat", source_id="c")
    with caplog.at_level(logging.WARNING, logger="producers.instrument"):
        # request.user.id: an integer is its digits; a bool is no id
        with usage_attributes(user=42, feature=" search ", flag=True, big=10**5000) as inside:
            assert inside == {"user": "42", "feature": "search"}
            message = client.messages.create(**ASK)
        with usage_attributes(user="", customer="x" * 300, plan=" ", **{"User": "x"}) as inside:
            assert inside == {}
            client.messages.create(**ASK)
        with usage_attributes({" user": "a", "user\n": "b", 7: "c"}) as inside:  # type: ignore[dict-item]
            assert inside == {}
        with usage_attributes("user=u-1") as inside:  # type: ignore[arg-type]
            assert inside == {}
        with usage_context(attributes={"user": 7, "team.id": None}) as tags:  # type: ignore[dict-item]
            assert tags.attributes == {"user": "7"}
    assert message.usage.output_tokens == 503
    first, second = sink.events
    assert first.attributes == {"user": "42", "feature": "search"} and second.attributes == {}
    log = caplog.text
    assert "usage_context: value of attribute 'flag' must be a string, not bool" in log
    assert "value of 'user' must be 1 to 256 characters; that attribute is left out" in log
    assert "value of 'customer' must be 1 to 256 characters" in log
    assert "value of 'plan' must be 1 to 256 characters" in log
    assert "value of 'big' must be 1 to 256 characters" in log  # no str() of 5,000 digits
    assert "key 'User' must match" in log and "key ' user' must match" in log
    assert "key 'user\\n' must match" in log and "attribute key 7 must be a string" in log
    assert "attributes must be a mapping, ignored: 'user=u-1'" in log
    assert "value of attribute 'team.id' must be a string, not NoneType" in log
    assert "the block goes ahead" in log

    # per call alike: a bad pair is left out with a warning; the call and its usage go ahead
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="producers.instrument"):
        client.messages.create(
            **ASK, **at({"user": 42, "Bad Key": "x", "feature": 7.5, " session": "s", "ok": True})
        )
        client.messages.create(**ASK, **at("user=u-1"))
    third, fourth = sink.events[2:]
    assert third.attributes == {"user": "42"} and fourth.attributes == {}
    assert "key 'Bad Key' must match" in caplog.text and "key ' session' must match" in caplog.text
    assert "value of attribute 'feature' must be a string, not float" in caplog.text
    assert "value of attribute 'ok' must be a string, not bool" in caplog.text
    assert "attributes must be a mapping" in caplog.text
    assert "that attribute is left out, the call goes ahead" in caplog.text


def test_too_many_attributes_in_blocks_keep_the_innermost(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sink = Sink()
    client = instrument(
        sync_client(),
        sink,
        tenant_id="acme",
        source="chat",
        attributes={f"client{i}": "v" for i in range(10)},
    )
    outer = {f"outer{i}": "v" for i in range(10)}
    inner = {f"inner{i}": "v" for i in range(10)}
    with caplog.at_level(logging.WARNING, logger="producers.instrument"):
        with usage_attributes(outer):
            with usage_attributes({**inner, "outer9": "again"}) as merged:
                # this block's 11, then the nearest of the enclosing ones; never a ValueError
                assert len(merged) == 16
                assert {**inner, "outer9": "again"}.items() <= merged.items()
                assert [k for k in merged if k.startswith("outer")] == [
                    f"outer{i}" for i in range(4, 10)
                ]
                client.messages.create(**ASK)
            client.messages.create(**ASK)
        with usage_attributes({f"k{i}": "v" for i in range(20)}) as alone:
            assert list(alone) == [f"k{i}" for i in range(16)]  # the first 16 given
    assert "at most 16 are kept (the innermost); left out: ['outer0', 'outer1'" in caplog.text
    assert "more than 16 attributes, left out: ['k16', 'k17', 'k18', 'k19']" in caplog.text
    nested, outer_only = (e.attributes for e in sink.events)
    assert nested == merged  # the blocks' 16 win over the client's
    # the blocks' 10 and the client's innermost (last set) 6
    assert outer_only == {**outer, **{f"client{i}": "v" for i in range(4, 10)}}
    assert "at most 16 are published" in caplog.text


def test_more_than_16_attributes_together_keep_the_calls_own(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sink = Sink()
    client = instrument(
        sync_client(),
        sink,
        tenant_id="acme",
        source="chat",
        attributes={f"client{i}": "v" for i in range(10)},
    )
    own = {f"call{i}": "v" for i in range(10)}
    with caplog.at_level(logging.WARNING, logger="producers.instrument"):
        client.messages.create(**ASK, **at(own))
    (event,) = sink.events
    assert len(event.attributes) == 16 and own.items() <= event.attributes.items()
    assert "at most 16 are published" in caplog.text


def test_batch_results_carry_attributes_the_result_attribution_winning() -> None:
    def attribution(custom_id: str) -> UsageTags | None:
        if custom_id.startswith("nightly-digest-"):
            return UsageTags(attributes={"feature": "digest"})
        return None

    sink = Sink()
    client = instrument(
        sync_client(),
        sink,
        tenant_id="acme",
        source="memory",
        attributes={"environment": "production"},
        batch_attribution=attribution,
    )
    with usage_attributes(customer="globex"):
        decoder = client.messages.batches.results(
            BATCH_ID, **at({"feature": "memory", "user": "u-5"})
        )
    for _ in decoder:
        pass
    one, zero, foreign = (e.attributes for e in sink.events)
    base = {"environment": "production", "customer": "globex", "user": "u-5"}
    assert one == zero == {**base, "feature": "memory"}
    assert foreign == {**base, "feature": "digest"}

    async def main() -> list[UsageEvent]:
        async_sink = AsyncSink()
        other = instrument(async_client(), async_sink, tenant_id="acme", source="memory")
        results = await other.beta.messages.batches.results(BATCH_ID, **at({"user": "u-6"}))
        async for _ in results:
            pass
        return async_sink.events

    assert [e.attributes for e in asyncio.run(main())] == [{"user": "u-6"}] * 3
