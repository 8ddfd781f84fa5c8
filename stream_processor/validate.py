"""Turn one calls-topic message into valid events and dead letters, never raising.

The contract (``producers.contract``) is the reference: every verdict and every dead-letter
reason is its own. Two faster paths come first because validation is most of a worker's
time per event:

1. ``WireCall``, a msgspec struct with the contract's fields and bounds, decodes a whole
   message in C; one pass per message then applies the rules msgspec cannot express, with
   the contract's own functions (time window, cache-write split, thinking within output,
   version-1 fields, metadata size). It only *vouches* for a message: anything it does not
   accept, or accepts in a form whose reading could differ from pydantic's (a time with more
   than 6 fractional digits, text with white space at either end, which the contract strips),
   goes on to the next path. A Hypothesis test holds the paths equal.
2. One pydantic call for the whole array.
3. Element by element through ``parse_call``, so that good events of a partly bad message
   survive and each bad one gets its own reason.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from sys import intern
from typing import Annotated, Any, Literal, cast

import msgspec
from msgspec import UNSET, Meta, UnsetType
from pydantic import TypeAdapter, ValidationError

from producers.contract import (
    EARLIEST_OCCURRED_AT,
    MAX_DURATION_MS,
    MAX_METADATA_BYTES,
    MAX_TOKENS,
    MAX_TOOL_REQUESTS,
    V2_FIELDS,
    CallEvent,
    ContractError,
    ServiceTier,
    Source,
    Speed,
    Status,
    UsageEvent,
    cache_writes,
    check_attributes,
    check_thinking,
    decode_calls,
    json_length_bound,
    latest_occurred_at,
    parse_call,
    uuid7,
)

# A message whose times msgspec could read differently from pydantic: one with more than 6
# fractional digits (msgspec rounds, pydantic truncates), or an escaped digit, dot, colon or
# sign, which could spell one. Two searches: as one alternation it costs ten times more.
_LONG_FRACTION = re.compile(rb"\.\d{7}")
_ESCAPED_DIGIT = re.compile(rb"\\u00[23]")

_Tenant = Annotated[str, Meta(min_length=1, max_length=128)]
_SourceId = Annotated[str, Meta(min_length=1, max_length=256)]
_Model = Annotated[str, Meta(min_length=1, max_length=128)]
_SourceName = Annotated[str, Meta(max_length=512)]
_Geo = Annotated[str, Meta(max_length=32)]
_RequestId = Annotated[str, Meta(max_length=256)]
_Tokens = Annotated[int, Meta(ge=0, le=MAX_TOKENS)]
_ToolRequests = Annotated[int, Meta(ge=0, le=MAX_TOOL_REQUESTS)]


class WireCall(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """A call event as msgspec reads it: the contract's fields, names and bounds.

    ``_complete`` fills in the cache-write fields and ``event_id`` when they are absent
    (UNSET), so that a vouched call reads like a :class:`UsageEvent`.
    """

    tenant_id: _Tenant
    occurred_at: Annotated[datetime, Meta(tz=True)]
    source: Source
    source_id: _SourceId
    model: _Model
    schema_version: Literal[1, 2] = 2
    event_id: uuid.UUID | UnsetType = UNSET
    source_name: _SourceName | None = None
    input_tokens: _Tokens = 0
    output_tokens: _Tokens = 0
    cache_creation_input_tokens: _Tokens | UnsetType = UNSET
    cache_creation_5m_input_tokens: _Tokens | UnsetType = UNSET
    cache_creation_1h_input_tokens: _Tokens | UnsetType = UNSET
    cache_read_input_tokens: _Tokens = 0
    service_tier: ServiceTier | None = None
    speed: Speed | None = None
    inference_geo: _Geo | None = None
    web_search_requests: _ToolRequests | None = None
    web_fetch_requests: _ToolRequests | None = None
    thinking_tokens: _Tokens | None = None
    duration_ms: Annotated[int, Meta(ge=0, le=MAX_DURATION_MS)] = 0
    status: Status = Status.OK
    request_id: _RequestId | None = None
    metadata: dict[str, str | int | float | bool | None] = {}
    attributes: dict[str, str] = {}


_WIRE_ARRAY = msgspec.json.Decoder(list[WireCall])
_WIRE_OBJECT = msgspec.json.Decoder(WireCall)
_BATCH = TypeAdapter(list[UsageEvent])


@dataclass(frozen=True, slots=True)
class Rejected:
    """One dead letter: what to publish (``payload``), why, and which element it was.

    ``index`` is None when the whole message was unusable; ``payload`` is then the original
    message bytes. For one bad element of an array it is that element as JSON.
    """

    reason: str
    payload: bytes
    index: int | None = None


def validate_message(
    value: bytes | None, default_tenant: str = ""
) -> tuple[list[CallEvent], list[Rejected]]:
    """Valid events of a message (in message order) and its rejected parts."""
    if value is None:
        return [], [Rejected("empty message (null value)", b"")]
    vouched = vouch(value)
    if vouched is not None:
        return vouched, []
    if value[:1] == b"[":
        try:
            return list(_BATCH.validate_json(value)), []
        except ValidationError:
            pass  # fall back to per-element validation for exact reasons
    try:
        raws = decode_calls(value)
    except ContractError as exc:
        return [], [Rejected(exc.reason, bytes(value))]
    events: list[CallEvent] = []
    rejected: list[Rejected] = []
    single = value.lstrip()[:1] == b"{"
    for index, raw in enumerate(raws):
        if default_tenant and isinstance(raw, dict) and not raw.get("tenant_id"):
            raw = {**raw, "tenant_id": default_tenant}
        try:
            events.append(parse_call(raw))
        except ContractError as exc:
            payload = bytes(value) if single else _dump(raw)
            rejected.append(Rejected(exc.reason, payload, None if single else index))
    return events, rejected


def vouch(value: bytes) -> list[CallEvent] | None:
    """The events of a message the fast path can vouch for entirely, else None."""
    try:
        if value[:1] == b"[":
            calls = _WIRE_ARRAY.decode(value)
        elif value[:1] == b"{":
            calls = [_WIRE_OBJECT.decode(value)]
        else:
            return None
    except (msgspec.ValidationError, msgspec.DecodeError):
        return None
    if _LONG_FRACTION.search(value) or _ESCAPED_DIGIT.search(value):
        return None
    latest = latest_occurred_at()
    try:
        for call in calls:
            _complete(call, latest)
    except (ValueError, OverflowError):
        return None
    return cast(list[CallEvent], calls)


def _complete(call: WireCall, latest: datetime) -> None:
    """Apply the contract's rules that msgspec cannot express; ValueError if one fails."""
    at = call.occurred_at
    if at.tzinfo is not UTC:
        at = call.occurred_at = at.astimezone(UTC)
    if at < EARLIEST_OCCURRED_AT or at > latest:
        raise ValueError("occurred_at outside the accepted window")
    for text in (call.tenant_id, call.source_id, call.model):
        if text.strip() is not text:
            raise ValueError("white space at an end: the contract strips it")
    for optional in (call.source_name, call.request_id, call.inference_geo):
        if optional is not None and optional.strip() is not optional:
            raise ValueError("white space at an end: the contract strips it")
    # One string per tenant, conversation and name, as pydantic's string cache gives: a
    # buffered row holds them until its insert (about 180 bytes a row, 30 MB at the bound).
    call.tenant_id = intern(call.tenant_id)
    call.source_id = intern(call.source_id)
    if call.source_name:
        call.source_name = intern(call.source_name)
    if call.event_id is UNSET:
        call.event_id = uuid7()
    if call.schema_version == 1 and any(getattr(call, name) is not None for name in V2_FIELDS):
        raise ValueError("version-1 event with version-2 fields")
    if call.thinking_tokens is not None:
        check_thinking(call.thinking_tokens, call.output_tokens)
    total = call.cache_creation_input_tokens
    five = call.cache_creation_5m_input_tokens
    hour = call.cache_creation_1h_input_tokens
    (
        call.cache_creation_input_tokens,
        call.cache_creation_5m_input_tokens,
        call.cache_creation_1h_input_tokens,
    ) = cache_writes(
        None if total is UNSET else total,
        None if five is UNSET else five,
        None if hour is UNSET else hour,
    )
    metadata = call.metadata
    if metadata:
        if json_length_bound(metadata) > MAX_METADATA_BYTES:
            raise ValueError("metadata may be too large: the contract measures it")
        for key, item in metadata.items():
            if key.strip() is not key or (type(item) is str and item.strip() is not item):
                raise ValueError("white space at an end: the contract strips it")
    attributes = call.attributes
    if attributes:
        # a key with white space at an end breaks its pattern: both paths reject it as sent
        check_attributes(attributes)
        for value in attributes.values():
            if value.strip() is not value:
                raise ValueError("white space at an end: the contract strips it")


def _dump(raw: Any) -> bytes:
    """One element as JSON; text that UTF-8 cannot carry (a lone surrogate) stays escaped."""
    try:
        return json.dumps(raw, separators=(",", ":"), ensure_ascii=False).encode()
    except UnicodeEncodeError:
        return json.dumps(raw, separators=(",", ":")).encode()
