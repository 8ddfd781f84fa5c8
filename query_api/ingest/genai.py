"""OTLP trace exports -> usage events: GenAI model-call spans mapped onto the event contract.

Services instrumented with OpenTelemetry (for instance traceloop's
``opentelemetry-instrumentation-anthropic``) already describe every model call as a span that
follows the GenAI semantic conventions, so they can report usage by exporting traces to
``/v1/traces`` instead of publishing events themselves. This module is pure: it decodes the
request, maps spans to raw event dicts (validated afterwards by
:func:`producers.contract.parse_call`, like any other event) and encodes the response.

Which spans count: a span is a model call when it has a model attribute and its
``gen_ai.operation.name`` is absent or one of ``chat``, ``text_completion``,
``generate_content``. Other spans (HTTP, database, ``invoke_agent``, ``create_agent``,
``execute_tool``, ``embeddings``, ...) are ignored and only counted: an ``invoke_agent`` span
may carry the usage summed over its child calls, so counting it would count twice.

Attribute lookup: for each event field the attribute names below are tried in order on the
span, then in order on its resource (so a service can set, say, ``gen_ai.agent.id`` once for
all its spans). Empty strings count as absent. :class:`SpanMapping` can rename them all.

| attribute (first one found wins)                     | event field                         |
|------------------------------------------------------|-------------------------------------|
| ``gen_ai.response.model``, ``gen_ai.request.model``  | ``model``                           |
| ``gen_ai.usage.input_tokens``,                       | ``input_tokens``, minus the cached  |
| ``gen_ai.usage.prompt_tokens`` (deprecated)          | tokens by default (see below)       |
| ``gen_ai.usage.output_tokens``,                      | ``output_tokens``                   |
| ``gen_ai.usage.completion_tokens`` (deprecated)      |                                     |
| ``gen_ai.usage.cache_read.input_tokens``,            | ``cache_read_input_tokens``         |
| ``gen_ai.usage.cache_read_input_tokens`` (older)     |                                     |
| ``gen_ai.usage.cache_creation.input_tokens``,        | ``cache_creation_input_tokens``     |
| ``gen_ai.usage.cache_creation_input_tokens`` (older) |                                     |
| ``llm_usage.cache_creation_1h_input_tokens``         | ``cache_creation_1h_input_tokens``, |
| (optional, at most the cache creation)               | the rest ``..._5m_input_tokens``    |
| ``llm_usage.source`` with ``llm_usage.source_id``    | ``source``, ``source_id``           |
| else ``gen_ai.agent.id``                             | ``source_id``, ``source`` agent     |
| else ``gen_ai.conversation.id``                      | ``source_id``, ``source`` chat      |
| ``llm_usage.source_name``, else for an agent         | ``source_name``                     |
| ``gen_ai.agent.name``                                |                                     |
| ``gen_ai.response.id``                               | ``request_id``                      |
| ``gen_ai.provider.name``, ``gen_ai.system`` (older)  | ``metadata`` gen_ai.provider.name   |
| ``service.name`` (normally on the resource)          | ``metadata`` service.name           |
| span ``start_time_unix_nano``                        | ``occurred_at`` (UTC, microseconds) |
| span ``end_time_unix_nano`` - start                  | ``duration_ms``                     |
| span ``status.code`` is ``STATUS_CODE_ERROR``        | ``status`` error, else ok           |
| tenant, span ``trace_id`` and ``span_id``            | ``event_id`` (UUIDv5: a retried     |
|                                                      | export is deduplicated downstream)  |
| the API key (``llm_usage.tenant_id`` must match)     | ``tenant_id``                       |
| ``llm_usage.attr.<key>`` (any key), else the names   | ``attributes[<key>]``               |
| below for the well-known keys                        |                                     |
| ``enduser.id``, ``user.id``                          | ``attributes["user"]``              |
| ``session.id``                                       | ``attributes["session"]``           |
| ``deployment.environment.name``,                     | ``attributes["environment"]``       |
| ``deployment.environment`` (older)                   |                                     |

Input tokens: the contract's ``input_tokens`` excludes cached tokens (the Anthropic API's
meaning) while the GenAI conventions' ``gen_ai.usage.input_tokens`` includes them (traceloop's
instrumentation sets input + cache read + cache creation). So by default the event's
``input_tokens`` is the span's minus cache read minus cache creation; a span whose input is
smaller than its cached tokens is rejected. ``llm_usage.input_tokens_include_cache`` (a
boolean, or the string ``"true"``/``"false"``, on the span or resource) overrides this per
span, :attr:`SpanMapping.input_tokens_include_cache` for the whole deployment.

Token counts must be non-negative integers (a double with an integral value is accepted); an
absent count is 0. A model-call span that cannot become an event (bad count, no source id, no
start time, tenant mismatch, ...) is rejected with a one-sentence reason naming the attribute.

Attributes (what the call is for, to group costs by; see ``producers/WIRE_FORMAT.md``): every
span or resource attribute named ``llm_usage.attr.<key>`` gives the event's attribute
``<key>``; :attr:`SpanMapping.attributes` adds OpenTelemetry's own names for the well-known
keys (the table above), tried after ``llm_usage.attr.<key>``. As everywhere, the span wins
over its resource. A value must be a string (an integer is taken as its decimal digits, as
for ids); a key that breaks the contract's rules (``producers.contract.ATTRIBUTE_KEY_RULE``),
a value that is not a string or longer than 256 characters, or more than 16 attributes on one
call rejects the span, with the reason naming the attribute.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTracePartialSuccess,
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from producers.contract import (
    ATTRIBUTE_KEY,
    ATTRIBUTE_KEY_RULE,
    MAX_ATTRIBUTE_VALUE,
    MAX_ATTRIBUTES,
    SCHEMA_VERSION,
    Source,
)

# Drawn once at random and fixed forever: event ids derive from it, so changing it would let
# a retried export (same trace and span ids) through the deduplication as new calls.
NAMESPACE = uuid.UUID("322203c7-3799-4044-8322-d8374a8db270")


def span_event_id(tenant_id: str, trace_id: bytes, span_id: bytes) -> str:
    """The event id of a span: the same for a retried export, distinct across tenants (the
    worker deduplicates by event id alone, and two tenants' tracers may reuse ids)."""
    return str(uuid.uuid5(NAMESPACE, f"{tenant_id}:{trace_id.hex()}:{span_id.hex()}"))


PROTOBUF_TYPES = frozenset({"application/x-protobuf", "application/protobuf"})
JSON_TYPE = "application/json"
MODEL_CALL_OPERATIONS = frozenset({"chat", "text_completion", "generate_content"})
INCLUDE_CACHE_ATTRIBUTE = "llm_usage.input_tokens_include_cache"
TENANT_ATTRIBUTE = "llm_usage.tenant_id"
ATTRIBUTE_PREFIX = "llm_usage.attr."  # llm_usage.attr.<key> -> the event's attribute <key>
# OpenTelemetry's names for the well-known attribute keys (tried after llm_usage.attr.<key>)
DEFAULT_ATTRIBUTE_NAMES: Mapping[str, tuple[str, ...]] = {
    "user": ("enduser.id", "user.id"),
    "session": ("session.id",),
    "environment": ("deployment.environment.name", "deployment.environment"),
}

# OTLP/JSON spells these bytes fields in hex; protobuf's JSON mapping expects base64.
_HEX_ID_KEYS = ("traceId", "spanId", "parentSpanId", "trace_id", "span_id", "parent_span_id")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class OtlpDecodeError(ValueError):
    """The request body cannot be decoded; the message says why (the HTTP error's detail)."""


def _media_type(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


def decode_request(body: bytes, content_type: str) -> ExportTraceServiceRequest:
    """Parse an OTLP/HTTP trace export in either of its encodings (protobuf or JSON)."""
    media = _media_type(content_type)
    request = ExportTraceServiceRequest()
    if media in PROTOBUF_TYPES:
        try:
            request.ParseFromString(body)
        except DecodeError as exc:
            raise OtlpDecodeError(f"body is not an OTLP protobuf trace export: {exc}") from exc
        return request
    if media == JSON_TYPE:
        try:
            payload = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
            raise OtlpDecodeError(f"body is not valid JSON: {exc}") from exc
        if not isinstance(payload, dict):
            raise OtlpDecodeError(f"body must be a JSON object, got {type(payload).__name__}")
        _hex_ids_to_base64(payload)
        try:
            json_format.ParseDict(payload, request, ignore_unknown_fields=True)
        except (json_format.ParseError, RecursionError) as exc:
            raise OtlpDecodeError(f"body is not an OTLP/JSON trace export: {exc}") from exc
        return request
    raise OtlpDecodeError(
        f"unsupported content type {media!r}: send application/x-protobuf or application/json"
    )


def _hex_ids_to_base64(payload: dict[str, Any]) -> None:
    """Rewrite the span and link ids in place; a malformed structure is left to ParseDict."""
    for resource_spans in _objects(payload, "resourceSpans", "resource_spans"):
        for scope_spans in _objects(resource_spans, "scopeSpans", "scope_spans"):
            for span in _objects(scope_spans, "spans"):
                _convert_ids(span)
                for link in _objects(span, "links"):
                    _convert_ids(link)


def _objects(parent: dict[str, Any], *keys: str) -> Iterator[dict[str, Any]]:
    for key in keys:
        items = parent.get(key)
        if isinstance(items, list):
            yield from (item for item in items if isinstance(item, dict))


def _convert_ids(obj: dict[str, Any]) -> None:
    for key in _HEX_ID_KEYS:
        value = obj.get(key)
        if isinstance(value, str):
            try:
                raw = bytes.fromhex(value)
            except ValueError as exc:
                raise OtlpDecodeError(f"{key} {value!r} is not a hex string") from exc
            obj[key] = base64.b64encode(raw).decode("ascii")


def encode_response(rejected_spans: int, error_message: str, content_type: str) -> bytes:
    """An ``ExportTraceServiceResponse``, in JSON for a JSON request and protobuf otherwise.

    ``partial_success`` is set only when something was rejected: OTLP reads its mere presence
    as a partial success.
    """
    response = ExportTraceServiceResponse()
    if rejected_spans > 0 or error_message:
        response.partial_success.CopyFrom(
            ExportTracePartialSuccess(rejected_spans=rejected_spans, error_message=error_message)
        )
    if _media_type(content_type) == JSON_TYPE:
        return json.dumps(json_format.MessageToDict(response), separators=(",", ":")).encode()
    return response.SerializeToString()


@dataclass(frozen=True)
class SpanMapping:
    """Which attributes feed which event field (names tried in order, span then resource).

    The defaults follow the GenAI semantic conventions and their deprecated names; a
    deployment whose instrumentation uses other names overrides some with :meth:`from_file`.
    """

    model: tuple[str, ...] = ("gen_ai.response.model", "gen_ai.request.model")
    operation_name: tuple[str, ...] = ("gen_ai.operation.name",)
    input_tokens: tuple[str, ...] = ("gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens")
    output_tokens: tuple[str, ...] = (
        "gen_ai.usage.output_tokens",
        "gen_ai.usage.completion_tokens",
    )
    cache_read_input_tokens: tuple[str, ...] = (
        "gen_ai.usage.cache_read.input_tokens",
        "gen_ai.usage.cache_read_input_tokens",
    )
    cache_creation_input_tokens: tuple[str, ...] = (
        "gen_ai.usage.cache_creation.input_tokens",
        "gen_ai.usage.cache_creation_input_tokens",
    )
    cache_creation_1h_input_tokens: tuple[str, ...] = ("llm_usage.cache_creation_1h_input_tokens",)
    source: tuple[str, ...] = ("llm_usage.source",)
    source_id: tuple[str, ...] = ("llm_usage.source_id",)
    source_name: tuple[str, ...] = ("llm_usage.source_name",)
    agent_id: tuple[str, ...] = ("gen_ai.agent.id",)
    agent_name: tuple[str, ...] = ("gen_ai.agent.name",)
    conversation_id: tuple[str, ...] = ("gen_ai.conversation.id",)
    request_id: tuple[str, ...] = ("gen_ai.response.id",)
    provider: tuple[str, ...] = ("gen_ai.provider.name", "gen_ai.system")
    service_name: tuple[str, ...] = ("service.name",)
    # OTel semconv: gen_ai.usage.input_tokens includes cached tokens; Anthropic's excludes them
    input_tokens_include_cache: bool = True
    # event attribute key -> span attribute names, tried after ``attribute_prefix + key``; in
    # a file, merged over these defaults (a key mapped to [] drops its default names)
    attributes: Mapping[str, tuple[str, ...]] = field(
        default_factory=lambda: dict(DEFAULT_ATTRIBUTE_NAMES), hash=False
    )
    attribute_prefix: str = ATTRIBUTE_PREFIX  # <prefix><key> -> attribute <key>, any key

    def __post_init__(self) -> None:
        """Fail at startup on a mistyped mapping rather than on every span."""
        for spec in fields(self):
            value = getattr(self, spec.name)
            if spec.name == "input_tokens_include_cache":
                if not isinstance(value, bool):
                    raise ValueError(f"{spec.name} must be true or false, got {value!r}")
            elif spec.name == "attributes":
                object.__setattr__(self, spec.name, _attribute_names(value))
            elif spec.name == "attribute_prefix":
                if not isinstance(value, str) or not value:
                    raise ValueError(f"{spec.name} must be a non-empty string, got {value!r}")
            elif not (
                isinstance(value, tuple)
                and value
                and all(isinstance(name, str) and name for name in value)
            ):
                raise ValueError(f"{spec.name} must be a non-empty list of attribute names")

    @classmethod
    def from_file(cls, path: Path) -> SpanMapping:
        """A JSON object overriding any subset of the fields (lists of names, or a boolean)."""
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path} is not valid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise ValueError(f"{path} must hold a JSON object, not {type(data).__name__}")
        known = [spec.name for spec in fields(cls)]
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ValueError(
                f"{path}: unknown field(s) {', '.join(unknown)}; known: {', '.join(known)}"
            )
        overrides: dict[str, Any] = {
            key: tuple(value) if isinstance(value, list) else value for key, value in data.items()
        }
        if isinstance(overrides.get("attributes"), dict):  # merged over the defaults
            overrides["attributes"] = {**DEFAULT_ATTRIBUTE_NAMES, **overrides["attributes"]}
        try:
            return cls(**overrides)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from exc


def _attribute_names(value: Any) -> dict[str, tuple[str, ...]]:
    """``SpanMapping.attributes`` checked, lists made tuples, keys mapped to nothing left out."""
    if not isinstance(value, Mapping):
        raise ValueError(
            f"attributes must map attribute keys to lists of attribute names, got {value!r}"
        )
    names: dict[str, tuple[str, ...]] = {}
    for key, given in value.items():
        if not isinstance(key, str) or not ATTRIBUTE_KEY.fullmatch(key):
            raise ValueError(f"attributes: key {key!r} must match {ATTRIBUTE_KEY_RULE}")
        if not (isinstance(given, list | tuple) and all(isinstance(n, str) and n for n in given)):
            raise ValueError(f"attributes: {key!r} must map to a list of attribute names")
        if given:
            names[key] = tuple(given)
    return names


@dataclass
class Mapped:
    """The outcome of one export request, for the response's ``partial_success``."""

    events: list[dict[str, Any]] = field(default_factory=list)  # raw, for parse_call
    span_index: list[int] = field(default_factory=list)  # each event's span position
    ignored: int = 0  # spans that are not GenAI model calls (not errors)
    rejected: list[tuple[int, str]] = field(default_factory=list)  # (span position, reason)


class _Rejected(Exception):
    """A model-call span that cannot become an event; the message is the reason."""


@dataclass(frozen=True)
class _Composite:
    """An array, key-value list or bytes value: no event field takes one."""

    kind: str

    def __repr__(self) -> str:
        return {"array_value": "an array", "kvlist_value": "a key-value list"}.get(
            self.kind, "bytes"
        )


_Value = str | int | float | bool | _Composite
_SCALARS = ("string_value", "bool_value", "int_value", "double_value")


def _values(attributes: Sequence[KeyValue]) -> dict[str, _Value]:
    """Attribute values by key, leaving out empty ones (unset AnyValue or blank string)."""
    values: dict[str, _Value] = {}
    for attribute in attributes:
        value = _value(attribute.value)
        if value is not None and not (isinstance(value, str) and not value.strip()):
            values[attribute.key] = value
    return values


def _value(any_value: AnyValue) -> _Value | None:
    kind = any_value.WhichOneof("value")
    if kind is None:
        return None
    if kind in _SCALARS:
        value: _Value = getattr(any_value, kind)
        return value
    return _Composite(kind)


class _Attributes:
    """A span's attributes, falling back to its resource's."""

    def __init__(self, span: Mapping[str, _Value], resource: Mapping[str, _Value]) -> None:
        self._layers = (span, resource)

    def keys_after(self, prefix: str) -> dict[str, None]:
        """What follows ``prefix`` in the names set on the span or resource (ordered, once)."""
        return {
            name[len(prefix) :]: None
            for layer in self._layers
            for name in layer
            if name.startswith(prefix)
        }

    def get(self, names: Sequence[str]) -> tuple[str, _Value] | None:
        """The first of ``names`` set on the span, else on the resource, with its name."""
        for layer in self._layers:
            for name in names:
                if name in layer:
                    return name, layer[name]
        return None

    def text(self, names: Sequence[str]) -> str | None:
        found = self.get(names)
        if found is None:
            return None
        name, value = found
        if isinstance(value, str):
            return value
        if type(value) is int:  # an id sent as a number
            return str(value)
        raise _Rejected(f"{name} must be a string, got {value!r}")

    def count(self, names: Sequence[str]) -> tuple[str, int] | None:
        """A token count and the attribute it came from."""
        found = self.get(names)
        if found is None:
            return None
        name, value = found
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if type(value) is not int or value < 0:
            raise _Rejected(f"{name} must be a non-negative integer, got {value!r}")
        return name, value

    def flag(self, name: str, default: bool) -> bool:
        found = self.get((name,))
        if found is None:
            return default
        value = found[1]
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true"
        raise _Rejected(f"{name} must be a boolean or the string true or false, got {value!r}")


def _either(*names: Sequence[str]) -> str:
    flat = [name for group in names for name in group]
    return flat[0] if len(flat) == 1 else f"{', '.join(flat[:-1])} or {flat[-1]}"


def _spans(request: ExportTraceServiceRequest) -> Iterator[tuple[Span, dict[str, _Value]]]:
    """Every span in request order, with its resource's attributes."""
    for resource_spans in request.resource_spans:
        resource = _values(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                yield span, resource


def spans_to_events(
    request: ExportTraceServiceRequest, tenant_id: str, mapping: SpanMapping = SpanMapping()
) -> Mapped:
    """Map each GenAI model-call span to a raw event of ``tenant_id`` (the API key's tenant).

    Span positions count spans across all resources and scopes, in request order.
    """
    mapped = Mapped()
    for position, (span, resource) in enumerate(_spans(request)):
        attributes = _Attributes(_values(span.attributes), resource)
        try:
            event = _event(span, attributes, tenant_id, mapping)
        except _Rejected as exc:
            mapped.rejected.append((position, str(exc)))
            continue
        if event is None:
            mapped.ignored += 1
        else:
            mapped.events.append(event)
            mapped.span_index.append(position)
    return mapped


def _event(
    span: Span, attributes: _Attributes, tenant_id: str, mapping: SpanMapping
) -> dict[str, Any] | None:
    """The raw event of one span, or None when the span is not a model call."""
    operation = attributes.get(mapping.operation_name)
    if attributes.get(mapping.model) is None or (
        operation is not None and operation[1] not in MODEL_CALL_OPERATIONS
    ):
        return None
    claimed = attributes.text((TENANT_ATTRIBUTE,))
    if claimed is not None and claimed.strip() != tenant_id:
        raise _Rejected(
            f"{TENANT_ATTRIBUTE} {claimed!r} does not match the API key's tenant {tenant_id!r}"
        )
    if not span.trace_id or not span.span_id:
        raise _Rejected("span has no trace_id or span_id, needed for a stable event_id")
    start, end = span.start_time_unix_nano, span.end_time_unix_nano
    if start == 0:
        raise _Rejected("span has no start_time_unix_nano")
    if end < start:
        raise _Rejected("span end_time_unix_nano is before its start_time_unix_nano")
    source, source_id, source_name = _source(attributes, mapping)
    event: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "event_id": span_event_id(tenant_id, span.trace_id, span.span_id),
        "tenant_id": tenant_id,
        "occurred_at": _isoformat(start),
        "source": source,
        "source_id": source_id,
        "model": attributes.text(mapping.model),
        **_tokens(attributes, mapping),
        "duration_ms": (end - start) // 1_000_000,
        "status": "error" if span.status.code == Status.STATUS_CODE_ERROR else "ok",
        "metadata": _metadata(attributes, mapping),
    }
    if source_name is not None:
        event["source_name"] = source_name
    request_id = attributes.text(mapping.request_id)
    if request_id is not None:
        event["request_id"] = request_id
    labels = _event_attributes(attributes, mapping)
    if labels:
        event["attributes"] = labels
    return event


def _event_attributes(attributes: _Attributes, mapping: SpanMapping) -> dict[str, str]:
    """The event's attributes: ``<prefix><key>`` for any key, then the mapped names."""
    prefix = mapping.attribute_prefix
    keys = dict.fromkeys(mapping.attributes) | attributes.keys_after(prefix)
    found: dict[str, str] = {}
    for key in keys:
        names = (prefix + key, *mapping.attributes.get(key, ()))
        hit = attributes.get(names)
        if hit is None:
            continue
        name = hit[0]
        if not ATTRIBUTE_KEY.fullmatch(key):
            raise _Rejected(f"{name}: attribute key {key!r} must match {ATTRIBUTE_KEY_RULE}")
        value = attributes.text((name,))
        if value is None:
            continue
        value = value.strip()
        if len(value) > MAX_ATTRIBUTE_VALUE:
            raise _Rejected(
                f"{name} must be at most {MAX_ATTRIBUTE_VALUE} characters, got {len(value)}"
            )
        found[key] = value
    if len(found) > MAX_ATTRIBUTES:
        raise _Rejected(
            f"span has {len(found)} attributes ({', '.join(sorted(found))}), "
            f"at most {MAX_ATTRIBUTES} are allowed"
        )
    return found


def _isoformat(unix_nano: int) -> str:
    """Exact to the microsecond: integer math, no float rounding of the nanoseconds."""
    seconds, micros = divmod(unix_nano // 1000, 1_000_000)
    moment = _EPOCH + timedelta(seconds=seconds, microseconds=micros)
    return moment.isoformat(timespec="microseconds")


def _tokens(attributes: _Attributes, mapping: SpanMapping) -> dict[str, int]:
    """The token fields, with input converted to the contract's meaning (cache excluded)."""

    def count(names: Sequence[str]) -> int:
        found = attributes.count(names)
        return 0 if found is None else found[1]

    found_input = attributes.count(mapping.input_tokens)
    input_name, input_tokens = found_input or (mapping.input_tokens[0], 0)
    cache_read = count(mapping.cache_read_input_tokens)
    cache_creation = count(mapping.cache_creation_input_tokens)
    if attributes.flag(INCLUDE_CACHE_ATTRIBUTE, mapping.input_tokens_include_cache):
        cached = cache_read + cache_creation
        if input_tokens < cached:
            raise _Rejected(
                f"{input_name} ({input_tokens}) is less than the cached tokens it should "
                f"include ({cached}), set {INCLUDE_CACHE_ATTRIBUTE} to false if it excludes them"
            )
        input_tokens -= cached
    tokens = {
        "input_tokens": input_tokens,
        "output_tokens": count(mapping.output_tokens),
        "cache_read_input_tokens": cache_read,
        "cache_creation_input_tokens": cache_creation,
    }
    one_hour = attributes.count(mapping.cache_creation_1h_input_tokens)
    if one_hour is not None:
        name, hour = one_hour
        if hour > cache_creation:
            raise _Rejected(
                f"{name} ({hour}) exceeds the cache creation tokens ({cache_creation}) "
                "it is part of"
            )
        tokens["cache_creation_5m_input_tokens"] = cache_creation - hour
        tokens["cache_creation_1h_input_tokens"] = hour
    return tokens


def _source(attributes: _Attributes, mapping: SpanMapping) -> tuple[str, str, str | None]:
    """(source, source_id, source_name): our own attributes first, then the semconv ones."""
    name = attributes.text(mapping.source_name)
    source = attributes.text(mapping.source)
    source_id = attributes.text(mapping.source_id)
    if source is not None and source_id is None:
        raise _Rejected(f"{_either(mapping.source)} is set without {_either(mapping.source_id)}")
    if source_id is not None:
        if source is None:
            raise _Rejected(
                f"{_either(mapping.source_id)} is set without {_either(mapping.source)} "
                "(chat, agent or memory)"
            )
        return source, source_id, name
    agent_id = attributes.text(mapping.agent_id)
    if agent_id is not None:
        return Source.AGENT.value, agent_id, name or attributes.text(mapping.agent_name)
    conversation_id = attributes.text(mapping.conversation_id)
    if conversation_id is not None:
        return Source.CHAT.value, conversation_id, name
    raise _Rejected(
        "span has no source id, set "
        + _either(mapping.source_id, mapping.agent_id, mapping.conversation_id)
    )


def _metadata(attributes: _Attributes, mapping: SpanMapping) -> dict[str, str]:
    metadata = {}
    for key, names in (
        ("gen_ai.provider.name", mapping.provider),
        ("service.name", mapping.service_name),
    ):
        value = attributes.text(names)
        if value is not None:
            metadata[key] = value
    return metadata
