"""OTLP GenAI spans become contract events, and everything else is counted or explained."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import anthropic
import httpx2
import pytest
from hypothesis import given
from hypothesis import strategies as st
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.instrumentation.anthropic import AnthropicInstrumentor
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status
from opentelemetry.sdk.resources import Resource as SdkResource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from producers.contract import ContractError, UsageEvent, parse_call
from query_api.ingest.genai import (
    NAMESPACE,
    Mapped,
    OtlpDecodeError,
    SpanMapping,
    decode_request,
    encode_response,
    spans_to_events,
)

START = (time.time_ns() // 1_000_000_000 - 60) * 1_000_000_000 + 123_456_789  # a minute ago
TRACE = bytes.fromhex("5b8efff798038103d269b633813fc60c")
SPAN = bytes.fromhex("eee19b7ec3c1b174")
PROTOBUF = "application/x-protobuf"
JSON = "application/json"

Attrs = dict[str, Any]


def any_value(value: Any) -> AnyValue:
    if isinstance(value, bool):
        return AnyValue(bool_value=value)
    if isinstance(value, int):
        return AnyValue(int_value=value)
    if isinstance(value, float):
        return AnyValue(double_value=value)
    if isinstance(value, list):
        return AnyValue(array_value=ArrayValue(values=[any_value(v) for v in value]))
    return AnyValue(string_value=value)


def kvs(attrs: Attrs) -> list[KeyValue]:
    return [KeyValue(key=key, value=any_value(value)) for key, value in attrs.items()]


def chat(**overrides: Any) -> Attrs:
    """A traceloop-style chat span: input includes the cached tokens."""
    attrs: Attrs = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "anthropic",
        "gen_ai.request.model": "claude-sonnet-4-6",
        "gen_ai.response.model": "claude-sonnet-4-6-20260217",
        "gen_ai.response.id": "msg_01",
        "gen_ai.conversation.id": "conv-1",
        "gen_ai.usage.input_tokens": 1500,
        "gen_ai.usage.output_tokens": 20,
        "gen_ai.usage.cache_read.input_tokens": 1000,
        "gen_ai.usage.cache_creation.input_tokens": 200,
    }
    attrs.update(overrides)
    return {key: value for key, value in attrs.items() if value is not None}


def span(
    attrs: Attrs,
    *,
    trace_id: bytes = TRACE,
    span_id: bytes = SPAN,
    start: int = START,
    end: int | None = None,
    error: bool = False,
) -> Span:
    return Span(
        trace_id=trace_id,
        span_id=span_id,
        name="chat claude",
        start_time_unix_nano=start,
        end_time_unix_nano=start + 1_500_000_000 if end is None else end,
        attributes=kvs(attrs),
        status=Status(code=Status.STATUS_CODE_ERROR if error else Status.STATUS_CODE_OK),
    )


def export(*spans: Span, resource: Attrs | None = None) -> ExportTraceServiceRequest:
    return ExportTraceServiceRequest(
        resource_spans=[
            ResourceSpans(
                resource=Resource(attributes=kvs(resource or {})),
                scope_spans=[ScopeSpans(spans=list(spans))],
            )
        ]
    )


def mapped_of(
    *spans: Span, resource: Attrs | None = None, mapping: SpanMapping | None = None
) -> Mapped:
    mapped = spans_to_events(export(*spans, resource=resource), "acme", mapping or SpanMapping())
    for event in mapped.events:
        parse_call(event)  # every event the mapping produces honours the contract
    return mapped


def event_of(attrs: Attrs, resource: Attrs | None = None, **kwargs: Any) -> dict[str, Any]:
    mapped = mapped_of(span(attrs), resource=resource, **kwargs)
    assert mapped.rejected == [] and mapped.ignored == 0
    assert mapped.span_index == [0]
    return mapped.events[0]


def reason_of(attrs: Attrs, resource: Attrs | None = None, **kwargs: Any) -> str:
    mapped = mapped_of(span(attrs, **kwargs), resource=resource)
    assert mapped.events == [] and mapped.ignored == 0
    [(position, reason)] = mapped.rejected
    assert position == 0
    return reason


# --- the full event ---------------------------------------------------------------------------


def test_a_chat_span_becomes_a_valid_event() -> None:
    event = event_of(chat(), resource={"service.name": "chat-api"})
    assert event == {
        "schema_version": 2,
        "event_id": str(uuid.uuid5(NAMESPACE, f"acme:{TRACE.hex()}:{SPAN.hex()}")),
        "tenant_id": "acme",
        "occurred_at": event["occurred_at"],
        "source": "chat",
        "source_id": "conv-1",
        "model": "claude-sonnet-4-6-20260217",
        "input_tokens": 300,
        "output_tokens": 20,
        "cache_read_input_tokens": 1000,
        "cache_creation_input_tokens": 200,
        "duration_ms": 1500,
        "status": "ok",
        "request_id": "msg_01",
        "metadata": {"gen_ai.provider.name": "anthropic", "service.name": "chat-api"},
    }
    parsed = parse_call(event)
    assert parsed.occurred_at.microsecond == 123_456
    assert int(parsed.occurred_at.timestamp()) == START // 1_000_000_000
    assert parsed.cache_creation_5m_input_tokens == 200  # the contract's default TTL


def test_occurred_at_is_exact_to_the_microsecond() -> None:
    start = 1_767_225_600_999_999_999  # 2026-01-01, a float would round this up a second
    event = spans_to_events(export(span(chat(), start=start)), "acme").events[0]
    assert event["occurred_at"] == "2026-01-01T00:00:00.999999+00:00"


def test_error_status() -> None:
    mapped = mapped_of(span(chat(), error=True))
    assert mapped.events[0]["status"] == "error"
    assert parse_call(mapped.events[0]).status == "error"


def test_request_id_and_metadata_are_optional() -> None:
    event = event_of(chat(**{"gen_ai.response.id": None, "gen_ai.provider.name": None}))
    assert "request_id" not in event
    assert event["metadata"] == {}


def test_spans_of_the_traceloop_anthropic_instrumentation() -> None:
    """The real instrumentation, exporter encoding and SDK response: no hand-made attributes."""

    def answer(request: httpx2.Request) -> httpx2.Response:
        usage = {
            "input_tokens": 300,
            "output_tokens": 20,
            "cache_read_input_tokens": 1000,
            "cache_creation_input_tokens": 200,
        }
        message = {
            "id": "msg_01",
            "type": "message",
            "role": "assistant",
            "model": "claude-sonnet-4-6-20260217",
            "content": [{"type": "text", "text": "hi"}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": usage,
        }
        return httpx2.Response(200, json=message)

    exporter = InMemorySpanExporter()
    resource = SdkResource.create({"service.name": "chat-api", "gen_ai.conversation.id": "c-1"})
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    instrumentor = AnthropicInstrumentor()
    instrumentor.instrument(tracer_provider=provider)
    try:
        client = anthropic.Anthropic(
            api_key="test", http_client=httpx2.Client(transport=httpx2.MockTransport(answer))
        )
        client.messages.create(
            model="claude-sonnet-4-6", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
        )
    finally:
        instrumentor.uninstrument()
    body = encode_spans(exporter.get_finished_spans()).SerializeToString()
    mapped = spans_to_events(decode_request(body, PROTOBUF), "acme")
    assert mapped.rejected == [] and mapped.ignored == 0
    event = parse_call(mapped.events[0])
    assert (event.input_tokens, event.cache_read_input_tokens) == (300, 1000)
    assert (event.cache_creation_input_tokens, event.output_tokens) == (200, 20)
    assert (event.model, event.request_id) == ("claude-sonnet-4-6-20260217", "msg_01")
    assert (event.source, event.source_id) == ("chat", "c-1")
    assert event.metadata == {"gen_ai.provider.name": "anthropic", "service.name": "chat-api"}


# --- tokens -----------------------------------------------------------------------------------


def test_semconv_input_tokens_include_the_cache_by_default() -> None:
    event = event_of(chat())
    assert (event["input_tokens"], event["cache_read_input_tokens"]) == (300, 1000)
    assert event["cache_creation_input_tokens"] == 200


@pytest.mark.parametrize("flag", [False, "false", " FALSE "])
def test_exclusive_input_tokens_via_span_attribute(flag: Any) -> None:
    event = event_of(chat(**{"llm_usage.input_tokens_include_cache": flag}))
    assert event["input_tokens"] == 1500


def test_exclusive_input_tokens_via_resource_attribute() -> None:
    event = event_of(chat(), resource={"llm_usage.input_tokens_include_cache": False})
    assert event["input_tokens"] == 1500


def test_exclusive_input_tokens_via_mapping_and_the_attribute_wins() -> None:
    exclusive = SpanMapping(input_tokens_include_cache=False)
    assert event_of(chat(), mapping=exclusive)["input_tokens"] == 1500
    inclusive = chat(**{"llm_usage.input_tokens_include_cache": "true"})
    assert event_of(inclusive, mapping=exclusive)["input_tokens"] == 300


def test_input_smaller_than_the_cache_is_rejected_with_the_way_out() -> None:
    reason = reason_of(chat(**{"gen_ai.usage.input_tokens": 100}))
    assert "gen_ai.usage.input_tokens (100)" in reason
    assert "cached tokens" in reason and "(1200)" in reason
    assert "llm_usage.input_tokens_include_cache" in reason


def test_cache_without_input_tokens_is_rejected_naming_the_input_attribute() -> None:
    reason = reason_of(chat(**{"gen_ai.usage.input_tokens": None}))
    assert reason.startswith("gen_ai.usage.input_tokens (0)")


def test_bad_include_cache_flag_is_rejected() -> None:
    reason = reason_of(chat(**{"llm_usage.input_tokens_include_cache": "yes"}))
    assert "llm_usage.input_tokens_include_cache" in reason and "'yes'" in reason


def test_one_hour_cache_writes_split_the_creation() -> None:
    event = event_of(chat(**{"llm_usage.cache_creation_1h_input_tokens": 50}))
    assert event["cache_creation_1h_input_tokens"] == 50
    assert event["cache_creation_5m_input_tokens"] == 150
    parsed = parse_call(event)
    assert parsed.cache_creation_input_tokens == 200


def test_one_hour_above_the_creation_is_rejected() -> None:
    reason = reason_of(chat(**{"llm_usage.cache_creation_1h_input_tokens": 201}))
    assert "llm_usage.cache_creation_1h_input_tokens (201)" in reason


def test_deprecated_attribute_names_still_work() -> None:
    old: Attrs = {
        "gen_ai.system": "anthropic",
        "gen_ai.request.model": "claude-haiku-4-5",
        "gen_ai.conversation.id": "conv-1",
        "gen_ai.usage.prompt_tokens": 700,
        "gen_ai.usage.completion_tokens": 30,
        "gen_ai.usage.cache_read_input_tokens": 400,
        "gen_ai.usage.cache_creation_input_tokens": 100,
    }
    event = event_of(old)
    assert event["model"] == "claude-haiku-4-5"
    assert (event["input_tokens"], event["output_tokens"]) == (200, 30)
    assert (event["cache_read_input_tokens"], event["cache_creation_input_tokens"]) == (400, 100)
    assert event["metadata"] == {"gen_ai.provider.name": "anthropic"}


def test_current_names_win_over_deprecated_ones() -> None:
    attrs = chat(
        **{
            "gen_ai.usage.prompt_tokens": 9,
            "gen_ai.usage.completion_tokens": 9,
            "gen_ai.usage.cache_read_input_tokens": 9,
            "gen_ai.system": "old",
        }
    )
    event = event_of(attrs)
    assert (event["input_tokens"], event["output_tokens"]) == (300, 20)
    assert event["cache_read_input_tokens"] == 1000
    assert event["metadata"]["gen_ai.provider.name"] == "anthropic"


def test_integral_doubles_count_as_integers() -> None:
    event = event_of(chat(**{"gen_ai.usage.output_tokens": 20.0}))
    assert event["output_tokens"] == 20 and type(event["output_tokens"]) is int


@pytest.mark.parametrize(
    ("value", "shown"),
    [(-1, "-1"), (2.5, "2.5"), ("20", "'20'"), (True, "True"), ([1, 2], "an array")],
)
def test_bad_token_counts_are_rejected_naming_the_attribute(value: Any, shown: str) -> None:
    reason = reason_of(chat(**{"gen_ai.usage.output_tokens": value}))
    assert reason == f"gen_ai.usage.output_tokens must be a non-negative integer, got {shown}"


def test_absent_counts_are_zero() -> None:
    attrs = {"gen_ai.request.model": "claude-haiku-4-5", "gen_ai.conversation.id": "c"}
    event = event_of(attrs)
    assert event["input_tokens"] == event["output_tokens"] == 0
    assert event["cache_read_input_tokens"] == event["cache_creation_input_tokens"] == 0


@given(
    otel_input=st.integers(0, 3_000_000),
    cache_read=st.integers(0, 2_000_000),
    cache_creation=st.integers(0, 2_000_000),
)
def test_inclusive_input_splits_exactly(
    otel_input: int, cache_read: int, cache_creation: int
) -> None:
    attrs = chat(
        **{
            "gen_ai.usage.input_tokens": otel_input,
            "gen_ai.usage.cache_read.input_tokens": cache_read,
            "gen_ai.usage.cache_creation.input_tokens": cache_creation,
        }
    )
    mapped = spans_to_events(export(span(attrs)), "acme")
    if otel_input < cache_read + cache_creation:
        assert len(mapped.rejected) == 1 and mapped.events == []
        return
    [event] = mapped.events
    assert event["input_tokens"] >= 0
    cached = event["cache_read_input_tokens"] + event["cache_creation_input_tokens"]
    assert event["input_tokens"] + cached == otel_input


# --- source -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("attrs", "expected"),
    [
        ({"gen_ai.conversation.id": "conv-1"}, ("chat", "conv-1", None)),
        (
            {"gen_ai.conversation.id": "conv-1", "llm_usage.source_name": "Trip planning"},
            ("chat", "conv-1", "Trip planning"),
        ),
        ({"gen_ai.agent.id": "agt-1"}, ("agent", "agt-1", None)),
        (
            {"gen_ai.agent.id": "agt-1", "gen_ai.agent.name": "Researcher"},
            ("agent", "agt-1", "Researcher"),
        ),
        (
            {"gen_ai.agent.id": "agt-1", "gen_ai.conversation.id": "conv-1"},
            ("agent", "agt-1", None),
        ),
        (
            {
                "gen_ai.agent.id": "agt-1",
                "gen_ai.agent.name": "Researcher",
                "llm_usage.source_name": "Research bot",
            },
            ("agent", "agt-1", "Research bot"),
        ),
        (
            {
                "gen_ai.agent.id": "agt-1",
                "gen_ai.agent.name": "Researcher",
                "gen_ai.conversation.id": "conv-1",
                "llm_usage.source": "memory",
                "llm_usage.source_id": "mem-7",
            },
            ("memory", "mem-7", None),
        ),
        ({"gen_ai.conversation.id": 4711}, ("chat", "4711", None)),
    ],
)
def test_source_precedence(attrs: Attrs, expected: tuple[str, str, str | None]) -> None:
    event = event_of(chat(**{"gen_ai.conversation.id": None}) | attrs)
    assert (event["source"], event["source_id"], event.get("source_name")) == expected


def test_missing_source_id_is_rejected_naming_the_attributes() -> None:
    reason = reason_of(chat(**{"gen_ai.conversation.id": None}))
    for name in ("llm_usage.source_id", "gen_ai.agent.id", "gen_ai.conversation.id"):
        assert name in reason


def test_blank_source_id_counts_as_missing() -> None:
    reason = reason_of(chat(**{"gen_ai.conversation.id": "  "}))
    assert reason.startswith("span has no source id")


def test_source_without_source_id_is_rejected() -> None:
    reason = reason_of(chat(**{"llm_usage.source": "memory"}))
    assert reason == "llm_usage.source is set without llm_usage.source_id"


def test_source_id_without_source_is_rejected() -> None:
    reason = reason_of(chat(**{"llm_usage.source_id": "mem-7"}))
    assert reason.startswith("llm_usage.source_id is set without llm_usage.source")


def test_unknown_source_passes_through_to_the_contract() -> None:
    attrs = chat(**{"llm_usage.source": "batch-job", "llm_usage.source_id": "job-1"})
    [event] = spans_to_events(export(span(attrs)), "acme").events
    assert event["source"] == "batch-job"
    with pytest.raises(ContractError, match="source"):
        parse_call(event)


# --- attributes ---------------------------------------------------------------------------------


def test_semconv_names_and_the_prefix_become_attributes() -> None:
    attrs = chat(
        **{
            "enduser.id": "u-42",
            "session.id": "sess-9",
            "deployment.environment.name": "staging",
            "llm_usage.attr.customer": "globex",
            "llm_usage.attr.prompt_version": "v3",
            "llm_usage.attr.team.id": 7,  # an integer, like an id: its digits
        }
    )
    event = event_of(attrs)
    assert event["attributes"] == {
        "user": "u-42",
        "session": "sess-9",
        "environment": "staging",
        "customer": "globex",
        "prompt_version": "v3",
        "team.id": "7",
    }
    assert UsageEvent.model_validate(event).attributes == event["attributes"]


def test_no_attributes_leave_the_field_out() -> None:
    assert "attributes" not in event_of(chat())


@pytest.mark.parametrize(
    ("attrs", "resource", "expected"),
    [
        ({"user.id": "u-1"}, {}, {"user": "u-1"}),
        ({"enduser.id": "a", "user.id": "b"}, {}, {"user": "a"}),  # enduser.id first
        ({"llm_usage.attr.user": "mine", "enduser.id": "theirs"}, {}, {"user": "mine"}),
        ({"deployment.environment": "prod"}, {}, {"environment": "prod"}),  # the older name
        (
            {"deployment.environment": "old"},
            {"deployment.environment.name": "new"},
            {"environment": "old"},  # the span wins over the resource, whatever the name
        ),
        (
            {},
            {"deployment.environment.name": "production", "llm_usage.attr.feature": "chat"},
            {"environment": "production", "feature": "chat"},  # the resource fills in
        ),
        ({"llm_usage.attr.user": "span"}, {"llm_usage.attr.user": "res"}, {"user": "span"}),
        ({"enduser.id": "  padded  "}, {}, {"user": "padded"}),
        ({"enduser.id": "   "}, {}, None),  # blank: absent
    ],
)
def test_attribute_precedence(attrs: Attrs, resource: Attrs, expected: Attrs | None) -> None:
    event = event_of(chat(**attrs), resource=resource)
    assert event.get("attributes") == expected


@pytest.mark.parametrize(
    ("attrs", "resource", "reason"),
    [
        (
            {"llm_usage.attr.Customer": "x"},
            {},
            "llm_usage.attr.Customer: attribute key 'Customer' must match",
        ),
        ({"llm_usage.attr.": "x"}, {}, "llm_usage.attr.: attribute key '' must match"),
        ({"llm_usage.attr.a b": "x"}, {}, "attribute key 'a b' must match"),
        ({}, {"llm_usage.attr.9lives": "x"}, "llm_usage.attr.9lives: attribute key '9lives'"),
        ({"enduser.id": "x" * 257}, {}, "enduser.id must be at most 256 characters, got 257"),
        ({"session.id": True}, {}, "session.id must be a string, got True"),
        ({"llm_usage.attr.user": 1.5}, {}, "llm_usage.attr.user must be a string, got 1.5"),
        ({"llm_usage.attr.user": ["a"]}, {}, "llm_usage.attr.user must be a string, got an array"),
        (
            {f"llm_usage.attr.k{i:02d}": "v" for i in range(17)},
            {},
            "span has 17 attributes (k00, k01,",
        ),
    ],
)
def test_bad_attributes_reject_the_span_naming_the_attribute(
    attrs: Attrs, resource: Attrs, reason: str
) -> None:
    assert reason in reason_of(chat(**attrs), resource=resource)


def test_bad_attributes_reject_only_their_span() -> None:
    bad = span(chat(**{"llm_usage.attr.User": "x"}), span_id=b"\x01" * 8)
    good = span(chat(**{"llm_usage.attr.user": "x"}), span_id=b"\x02" * 8)
    mapped = mapped_of(bad, good)
    assert [position for position, _ in mapped.rejected] == [0]
    assert mapped.span_index == [1] and mapped.events[0]["attributes"] == {"user": "x"}


def test_attribute_names_are_configurable(tmp_path: Path) -> None:
    path = tmp_path / "mapping.json"
    path.write_text(
        json.dumps(
            {
                "attributes": {"customer": ["app.customer_id"], "session": []},
                "attribute_prefix": "acme.",
            }
        )
    )
    mapping = SpanMapping.from_file(path)
    assert mapping.attributes == {
        "user": ("enduser.id", "user.id"),  # the defaults stay unless overridden
        "environment": ("deployment.environment.name", "deployment.environment"),
        "customer": ("app.customer_id",),
    }
    attrs = chat(
        **{
            "app.customer_id": "globex",
            "session.id": "not read any more",
            "acme.feature": "search",
            "llm_usage.attr.other": "not read any more",
        }
    )
    assert event_of(attrs, mapping=mapping)["attributes"] == {
        "customer": "globex",
        "feature": "search",
    }
    assert SpanMapping(attributes={}).attributes == {}
    assert (
        event_of(chat(**{"enduser.id": "u"}), mapping=SpanMapping(attributes={})).get("attributes")
        is None
    )


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"attributes": {"User": ["x"]}}', "attributes: key 'User' must match"),
        ('{"attributes": {"user": "enduser.id"}}', "'user' must map to a list of attribute"),
        ('{"attributes": {"user": [""]}}', "'user' must map to a list of attribute"),
        ('{"attributes": ["user"]}', "attributes must map attribute keys to lists"),
        ('{"attribute_prefix": ""}', "attribute_prefix must be a non-empty string"),
    ],
)
def test_bad_attribute_mappings_fail_at_startup(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "mapping.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        SpanMapping.from_file(path)


# --- resource fallback ------------------------------------------------------------------------


def test_resource_attributes_fill_in_for_the_span() -> None:
    attrs = chat(**{"gen_ai.conversation.id": None, "gen_ai.provider.name": None})
    resource = {
        "service.name": "research-agent",
        "gen_ai.agent.id": "agt-1",
        "gen_ai.agent.name": "Researcher",
        "gen_ai.provider.name": "anthropic",
    }
    event = event_of(attrs, resource=resource)
    assert (event["source"], event["source_id"], event["source_name"]) == (
        "agent",
        "agt-1",
        "Researcher",
    )
    assert event["metadata"] == {
        "gen_ai.provider.name": "anthropic",
        "service.name": "research-agent",
    }


def test_span_attributes_win_over_the_resource() -> None:
    resource = {"gen_ai.response.model": "resource-model", "gen_ai.usage.output_tokens": 99}
    event = event_of(chat(), resource=resource)
    assert event["model"] == "claude-sonnet-4-6-20260217"
    assert event["output_tokens"] == 20


def test_a_model_on_the_resource_makes_spans_model_calls() -> None:
    attrs = chat(**{"gen_ai.response.model": None, "gen_ai.request.model": None})
    event = event_of(attrs, resource={"gen_ai.request.model": "claude-haiku-4-5"})
    assert event["model"] == "claude-haiku-4-5"


# --- which spans count ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "operation", ["invoke_agent", "create_agent", "execute_tool", "embeddings"]
)
def test_other_operations_are_ignored(operation: str) -> None:
    mapped = mapped_of(span(chat(**{"gen_ai.operation.name": operation})))
    assert (mapped.events, mapped.rejected, mapped.ignored) == ([], [], 1)


@pytest.mark.parametrize("operation", ["chat", "text_completion", "generate_content", None])
def test_model_call_operations_count(operation: str | None) -> None:
    assert event_of(chat(**{"gen_ai.operation.name": operation}))["input_tokens"] == 300


def test_spans_without_a_model_are_ignored_even_if_malformed() -> None:
    http = span({"http.request.method": "POST"}, trace_id=b"", start=0)
    mapped = mapped_of(http)
    assert (mapped.events, mapped.rejected, mapped.ignored) == ([], [], 1)


def test_an_agent_run_counts_only_its_model_calls() -> None:
    agent = chat(
        **{"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.id": "agt-1"},
    )
    tool = {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "search"}
    calls = [span(chat(), span_id=bytes([n]) * 8) for n in (3, 4)]
    mapped = mapped_of(span(agent), span(tool, span_id=b"\x05" * 8), *calls)
    assert mapped.ignored == 2
    assert mapped.span_index == [2, 3]
    assert sum(e["input_tokens"] for e in mapped.events) == 600


def test_positions_count_across_resources_and_scopes() -> None:
    bad = span(chat(**{"gen_ai.conversation.id": None}), span_id=b"\x09" * 8)
    request = ExportTraceServiceRequest(
        resource_spans=[
            ResourceSpans(scope_spans=[ScopeSpans(spans=[span({})]), ScopeSpans(spans=[bad])]),
            ResourceSpans(
                resource=Resource(attributes=kvs({"gen_ai.conversation.id": "conv-2"})),
                scope_spans=[ScopeSpans(spans=[span({}), bad])],
            ),
        ]
    )
    mapped = spans_to_events(request, "acme")
    assert mapped.ignored == 2
    assert [position for position, _ in mapped.rejected] == [1]
    assert mapped.span_index == [3]
    assert mapped.events[0]["source_id"] == "conv-2"


# --- ids, times, tenant -----------------------------------------------------------------------


def test_event_ids_are_deterministic() -> None:
    def event_id(**kwargs: Any) -> str:
        [event] = spans_to_events(export(span(chat(), **kwargs)), "acme").events
        return str(event["event_id"])

    first = event_id()
    assert event_id() == first
    assert event_id(start=START + 1000) == first  # a retry's copy of the span
    assert event_id(span_id=b"\x07" * 8) != first
    assert event_id(trace_id=b"\x07" * 16) != first
    assert uuid.UUID(first).version == 5


@pytest.mark.parametrize(("trace_id", "span_id"), [(b"", SPAN), (TRACE, b"")])
def test_spans_without_ids_are_rejected(trace_id: bytes, span_id: bytes) -> None:
    reason = reason_of(chat(), trace_id=trace_id, span_id=span_id)
    assert "trace_id" in reason and "span_id" in reason


def test_span_without_start_time_is_rejected() -> None:
    assert "start_time_unix_nano" in reason_of(chat(), start=0, end=START)


def test_span_ending_before_it_starts_is_rejected() -> None:
    reason = reason_of(chat(), end=START - 1)
    assert "end_time_unix_nano is before" in reason


def test_zero_duration_is_fine() -> None:
    [event] = spans_to_events(export(span(chat(), end=START)), "acme").events
    assert event["duration_ms"] == 0


def test_matching_tenant_attribute_is_fine() -> None:
    assert event_of(chat(**{"llm_usage.tenant_id": "acme"}))["tenant_id"] == "acme"


CLAIM = {"llm_usage.tenant_id": "globex"}


@pytest.mark.parametrize(("on_span", "on_resource"), [(CLAIM, {}), ({}, CLAIM)])
def test_tenant_mismatch_is_rejected(on_span: Attrs, on_resource: Attrs) -> None:
    reason = reason_of(chat() | on_span, resource=on_resource)
    assert reason == "llm_usage.tenant_id 'globex' does not match the API key's tenant 'acme'"


def test_non_string_model_is_rejected() -> None:
    reason = reason_of(chat(**{"gen_ai.response.model": True}))
    assert reason == "gen_ai.response.model must be a string, got True"


# --- decoding ---------------------------------------------------------------------------------


def otlp_json_body() -> bytes:
    """What an OTLP/JSON exporter sends: hex ids, 64-bit integers as strings, camelCase."""

    def attr(key: str, value: dict[str, Any]) -> dict[str, Any]:
        return {"key": key, "value": value}

    chat_span = {
        "traceId": TRACE.hex(),
        "spanId": SPAN.hex(),
        "parentSpanId": "0102030405060708",
        "name": "chat claude",
        "kind": 3,
        "startTimeUnixNano": str(START),
        "endTimeUnixNano": str(START + 1_500_000_000),
        "attributes": [
            attr("gen_ai.operation.name", {"stringValue": "chat"}),
            attr("gen_ai.response.model", {"stringValue": "claude-sonnet-4-6-20260217"}),
            attr("gen_ai.usage.input_tokens", {"intValue": "1500"}),
            attr("gen_ai.usage.output_tokens", {"intValue": "20"}),
            attr("gen_ai.usage.cache_read.input_tokens", {"intValue": "1000"}),
            attr("gen_ai.usage.cache_creation.input_tokens", {"doubleValue": 200.0}),
            attr("llm_usage.input_tokens_include_cache", {"boolValue": True}),
        ],
        "links": [{"traceId": TRACE.hex(), "spanId": "0a0b0c0d0e0f0102"}],
        "status": {"code": 2, "message": "overloaded"},
    }
    agent_span = {
        "traceId": TRACE.hex(),
        "spanId": "0102030405060708",
        "name": "invoke_agent",
        "startTimeUnixNano": str(START),
        "endTimeUnixNano": str(START + 2_000_000_000),
        "attributes": [
            attr("gen_ai.operation.name", {"stringValue": "invoke_agent"}),
            attr("gen_ai.request.model", {"stringValue": "claude-sonnet-4-6"}),
        ],
    }
    body = {
        "resourceSpans": [
            {
                "resource": {
                    "attributes": [
                        attr("service.name", {"stringValue": "research-agent"}),
                        attr("gen_ai.agent.id", {"stringValue": "agt-1"}),
                    ]
                },
                "scopeSpans": [
                    {
                        "scope": {"name": "opentelemetry.instrumentation.anthropic"},
                        "spans": [agent_span, chat_span],
                        "someFutureField": True,
                    }
                ],
            }
        ]
    }
    return json.dumps(body).encode()


def equivalent_protobuf_request() -> ExportTraceServiceRequest:
    chat_attrs: Attrs = {
        "gen_ai.operation.name": "chat",
        "gen_ai.response.model": "claude-sonnet-4-6-20260217",
        "gen_ai.usage.input_tokens": 1500,
        "gen_ai.usage.output_tokens": 20,
        "gen_ai.usage.cache_read.input_tokens": 1000,
        "gen_ai.usage.cache_creation.input_tokens": 200.0,
        "llm_usage.input_tokens_include_cache": True,
    }
    agent_attrs = {
        "gen_ai.operation.name": "invoke_agent",
        "gen_ai.request.model": "claude-sonnet-4-6",
    }
    spans = [
        span(agent_attrs, span_id=bytes.fromhex("0102030405060708"), end=START + 2_000_000_000),
        span(chat_attrs, error=True),
    ]
    resource = {"service.name": "research-agent", "gen_ai.agent.id": "agt-1"}
    return export(*spans, resource=resource)


def test_protobuf_and_json_decode_to_the_same_events() -> None:
    from_json = spans_to_events(decode_request(otlp_json_body(), JSON), "acme")
    body = equivalent_protobuf_request().SerializeToString()
    from_protobuf = spans_to_events(decode_request(body, PROTOBUF), "acme")
    assert from_json == from_protobuf
    assert from_json.ignored == 1 and from_json.span_index == [1]
    [event] = from_json.events
    assert (event["source"], event["source_id"], event["input_tokens"]) == ("agent", "agt-1", 300)
    assert event["status"] == "error"
    assert isinstance(parse_call(event), UsageEvent)


def test_json_ids_are_decoded_from_hex() -> None:
    request = decode_request(otlp_json_body(), "Application/JSON; charset=utf-8")
    chat_span = request.resource_spans[0].scope_spans[0].spans[1]
    assert chat_span.trace_id == TRACE and chat_span.span_id == SPAN
    assert chat_span.parent_span_id == bytes.fromhex("0102030405060708")
    assert chat_span.links[0].span_id == bytes.fromhex("0a0b0c0d0e0f0102")


@pytest.mark.parametrize("content_type", [PROTOBUF, "application/protobuf", f"{PROTOBUF}; x=1"])
def test_protobuf_round_trips(content_type: str) -> None:
    request = equivalent_protobuf_request()
    assert decode_request(request.SerializeToString(), content_type) == request


def test_an_empty_body_is_an_empty_export() -> None:
    assert spans_to_events(decode_request(b"", PROTOBUF), "acme") == Mapped()
    assert spans_to_events(decode_request(b"{}", JSON), "acme") == Mapped()


@pytest.mark.parametrize(
    ("body", "content_type", "message"),
    [
        (b"\xff\xff\xff\xff", PROTOBUF, "not an OTLP protobuf trace export"),
        (b"{not json", JSON, "not valid JSON"),
        (b"\xff\xfe\x00", JSON, "not valid JSON"),
        (b"[" * 100_000, JSON, "not valid JSON"),
        (b"[]", JSON, "must be a JSON object, got list"),
        (b'{"resourceSpans": 5}', JSON, "not an OTLP/JSON trace export"),
        (
            b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"startTimeUnixNano": "soon"}]}]}]}',
            JSON,
            "not an OTLP/JSON trace export",
        ),
        (
            b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "xyz"}]}]}]}',
            JSON,
            "traceId 'xyz' is not a hex string",
        ),
    ],
)
def test_undecodable_bodies(body: bytes, content_type: str, message: str) -> None:
    with pytest.raises(OtlpDecodeError, match=message) as info:
        decode_request(body, content_type)
    assert "content type" not in str(info.value)  # the router answers 400, not 415


@pytest.mark.parametrize("content_type", ["text/plain", "", "application/grpc"])
def test_unsupported_content_type(content_type: str) -> None:
    with pytest.raises(OtlpDecodeError, match="unsupported content type") as info:
        decode_request(b"{}", content_type)
    assert "application/x-protobuf" in str(info.value) and JSON in str(info.value)


# --- responses --------------------------------------------------------------------------------


def test_response_round_trips_in_protobuf() -> None:
    body = encode_response(2, "span 1: no source id", PROTOBUF)
    response = ExportTraceServiceResponse.FromString(body)
    assert response.partial_success.rejected_spans == 2
    assert response.partial_success.error_message == "span 1: no source id"


def test_response_round_trips_in_json() -> None:
    body = encode_response(2, "span 1: no source id", f"{JSON}; charset=utf-8")
    assert json.loads(body) == {
        "partialSuccess": {"rejectedSpans": "2", "errorMessage": "span 1: no source id"}
    }


def test_a_warning_alone_is_a_partial_success() -> None:
    response = ExportTraceServiceResponse.FromString(encode_response(0, "slow down", PROTOBUF))
    assert response.HasField("partial_success")
    assert response.partial_success.rejected_spans == 0


def test_full_success_has_no_partial_success() -> None:
    assert not ExportTraceServiceResponse.FromString(encode_response(0, "", PROTOBUF)).HasField(
        "partial_success"
    )
    assert encode_response(0, "", PROTOBUF) == b""
    assert json.loads(encode_response(0, "", JSON)) == {}


# --- the mapping ------------------------------------------------------------------------------


def test_mapping_from_file_overrides_a_subset(tmp_path: Path) -> None:
    path = tmp_path / "mapping.json"
    path.write_text(
        json.dumps(
            {
                "model": ["llm.model_name"],
                "input_tokens": ["llm.token_count.prompt"],
                "input_tokens_include_cache": False,
            }
        )
    )
    mapping = SpanMapping.from_file(path)
    assert mapping.model == ("llm.model_name",)
    assert mapping.input_tokens_include_cache is False
    assert mapping.output_tokens == SpanMapping().output_tokens
    attrs = {
        "llm.model_name": "claude-haiku-4-5",
        "llm.token_count.prompt": 80,
        "gen_ai.usage.cache_read.input_tokens": 500,
        "gen_ai.conversation.id": "conv-1",
    }
    event = event_of(attrs, mapping=mapping)
    assert (event["model"], event["input_tokens"]) == ("claude-haiku-4-5", 80)
    assert mapped_of(span(chat()), mapping=mapping).ignored == 1  # gen_ai model no longer read


def test_mapping_from_file_names_unknown_keys(tmp_path: Path) -> None:
    path = tmp_path / "mapping.json"
    path.write_text(json.dumps({"model": ["m"], "modle": ["m"], "tokens": []}))
    with pytest.raises(ValueError, match="unknown field\\(s\\) modle, tokens"):
        SpanMapping.from_file(path)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"model": "llm.model_name"}', "model must be a non-empty list of attribute names"),
        ('{"model": []}', "model must be a non-empty list"),
        ('{"model": [1]}', "model must be a non-empty list"),
        ('{"input_tokens_include_cache": "no"}', "input_tokens_include_cache must be true or"),
        ('["model"]', "must hold a JSON object, not list"),
        ("{", "is not valid JSON"),
    ],
)
def test_mapping_from_file_rejects_bad_content(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "mapping.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=message) as info:
        SpanMapping.from_file(path)
    assert str(path) in str(info.value)
