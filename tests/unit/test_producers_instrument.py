"""Instrumented Anthropic clients: the real SDK against realistic mocked API responses.

The SDK (anthropic 2.x) speaks HTTP through ``httpx2``; ``httpx2.MockTransport`` answers
with the JSON and SSE bodies the Messages API sends. Events go to an in-memory sink here;
``tests/integration/test_producers_instrument.py`` sends them through Kafka.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import anthropic
import httpx2
import pytest

from producers.contract import Source, Status, UsageEvent
from producers.instrument import UNATTRIBUTED, instrument, usage_context

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
        "service_tier": "standard",
    },
}


def sse(events: list[tuple[str, dict[str, Any]]]) -> bytes:
    return b"".join(
        f"event: {name}\ndata: {json.dumps(data)}\n\n".encode() for name, data in events
    )


def stream_events(*, error_after_start: bool = False) -> list[tuple[str, dict[str, Any]]]:
    start_usage = {
        "input_tokens": 472,
        "output_tokens": 2,
        "cache_creation_input_tokens": 1200,
        "cache_read_input_tokens": 3000,
        "cache_creation": {"ephemeral_5m_input_tokens": 1200, "ephemeral_1h_input_tokens": 0},
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
                "usage": {"output_tokens": 89},
            },
        ),
        ("message_stop", {"type": "message_stop"}),
    ]


def handler(
    *, status: int = 200, error_stream: bool = False
) -> Callable[[httpx2.Request], httpx2.Response]:
    def handle(request: httpx2.Request) -> httpx2.Response:
        if request.url.path == "/v1/messages/count_tokens":  # not a billed call
            return httpx2.Response(200, json={"input_tokens": 12})
        assert request.url.path == "/v1/messages"
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
                content=sse(stream_events(error_after_start=error_stream)),
            )
        return httpx2.Response(200, headers={"request-id": "req_msg_1"}, json=MESSAGE_JSON)

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


def test_create_stream_true_raw_events_are_passed_through_unchanged() -> None:
    sink = Sink()
    client = instrument(sync_client(), sink, tenant_id="acme", source="memory", source_id="m1")
    plain = sync_client().messages.create(**ASK, stream=True)
    wrapped = client.messages.create(**ASK, stream=True)
    assert type(wrapped) is type(plain)
    assert [e.to_dict() for e in wrapped] == [e.to_dict() for e in plain]
    (event,) = sink.events
    assert event.output_tokens == 89 and event.source is Source.MEMORY


def test_a_stream_closed_early_still_publishes_what_was_billed() -> None:
    sink = Sink()
    client = instrument(sync_client(), sink, tenant_id="acme", source="chat", source_id="c3")
    with client.messages.stream(**ASK) as stream:
        next(iter(stream))  # message_start only
    (event,) = sink.events
    assert event.input_tokens == 472 and event.metadata.get("incomplete") is True


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
        assert len([e async for e in raw_stream]) == 7
        failing = instrument(async_client(status=429), sink, tenant_id="acme", source="agent")
        with pytest.raises(anthropic.RateLimitError):
            await failing.messages.create(**ASK)
        return sink.events

    created, streamed, raw, failed = asyncio.run(main())
    assert created.output_tokens == 503 and created.metadata["stream"] is False
    assert streamed.output_tokens == 89 and streamed.request_id == "req_stream_1"
    assert raw.output_tokens == 89
    assert failed.status is Status.ERROR and failed.metadata["http_status"] == 429


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
