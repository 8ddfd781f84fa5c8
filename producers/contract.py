"""The event contract: the one definition of what enters the pipeline.

Producers build these models and the stream processor validates incoming messages with the
very same classes, so the two can never disagree. Changing a field is a public API change:
bump ``SCHEMA_VERSION`` and keep the processor able to read the previous version.

Wire format (UTF-8 JSON):
- calls topic: a message value is a JSON array of call events (a small batch; producers batch
  to amortise the per-message cost downstream) or a single call event object;
- entities topic: one :class:`EntityRenamed` object per message.
"""

from __future__ import annotations

import json
import os
import re
import time
import uuid
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Annotated, Any, Literal, Protocol

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    ValidationError,
    field_validator,
    model_validator,
)

SCHEMA_VERSION: Literal[2] = 2
SUPPORTED_SCHEMA_VERSIONS = frozenset({1, 2})

MAX_TOKENS = 10_000_000  # per field per call; far above any model's context window
MAX_TOOL_REQUESTS = 100_000  # server-tool requests per call
MAX_DURATION_MS = 24 * 3600 * 1000
MAX_METADATA_BYTES = 16 * 1024
EARLIEST_OCCURRED_AT = datetime(2023, 1, 1, tzinfo=UTC)
# Attributes: who or what a call is for (end user, customer, feature, ...), to group by.
ATTRIBUTE_KEY = re.compile(r"[a-z][a-z0-9_.]{0,63}")  # matched whole (fullmatch)
# The rule as messages write it (the one place its text is derived).
ATTRIBUTE_KEY_RULE = f"^{ATTRIBUTE_KEY.pattern}$"
MAX_ATTRIBUTES = 16
MAX_ATTRIBUTE_VALUE = 256
# Keys with a documented meaning; any other key matching ATTRIBUTE_KEY is welcome too. The
# docs that list them (WIRE_FORMAT.md, README, producers.instrument) and the OTLP mapping's
# default names are held to this tuple by tests/unit/test_producers_contract.py.
WELL_KNOWN_ATTRIBUTES = ("user", "customer", "feature", "environment", "prompt_version", "session")
MAX_CLOCK_SKEW = timedelta(hours=1)


class Source(StrEnum):
    """Which service made the call."""

    CHAT = "chat"
    AGENT = "agent"
    MEMORY = "memory"


class Status(StrEnum):
    OK = "ok"
    ERROR = "error"


class ServiceTier(StrEnum):
    """``usage.service_tier`` of the Anthropic API: batch is billed at half price."""

    STANDARD = "standard"
    PRIORITY = "priority"
    BATCH = "batch"


class Speed(StrEnum):
    """``usage.speed``: fast mode is billed at the model's fast-mode prices."""

    STANDARD = "standard"
    FAST = "fast"


# Fields that schema version 2 added; a version-1 event must not carry them.
V2_FIELDS = (
    "service_tier", "speed", "inference_geo", "web_search_requests", "web_fetch_requests",
    "thinking_tokens",
)  # fmt: skip


_last_uuid7 = [0, 0]  # [millis, counter] of the previous id from this process


def uuid7() -> uuid.UUID:
    """A UUIDv7 (RFC 9562): 48-bit Unix ms, a 12-bit counter, then random bits.

    The counter (RFC 9562 method 1) keeps ids from one process sorted within a millisecond.
    """
    millis = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    if millis <= _last_uuid7[0] and _last_uuid7[1] < 0xFFF:
        millis, counter = _last_uuid7[0], _last_uuid7[1] + 1
    else:
        counter = (rand >> 62) & 0x7FF  # random start, leaving room to count up
    _last_uuid7[:] = [millis, counter]
    value = (millis & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76  # version 7
    value |= counter << 64  # rand_a (12 bits)
    value |= 0b10 << 62  # RFC 4122 variant
    value |= rand & ((1 << 62) - 1)  # rand_b (62 bits)
    return uuid.UUID(int=value)


TokenCount = Annotated[StrictInt, Field(ge=0, le=MAX_TOKENS)]
ToolRequests = Annotated[StrictInt, Field(ge=0, le=MAX_TOOL_REQUESTS)]
ShortText = Annotated[str, Field(min_length=1, max_length=256)]


def latest_occurred_at() -> datetime:
    """The latest call time accepted now: a producer's clock may run ahead by the skew."""
    return datetime.now(UTC) + MAX_CLOCK_SKEW


def _check_occurred_at(value: datetime) -> datetime:
    try:
        value = value.astimezone(UTC)
    except OverflowError:  # 0001-01-01T00:30:00+01:00 is in no UTC year
        raise ValueError("is out of range") from None
    if value < EARLIEST_OCCURRED_AT:
        raise ValueError(f"is before {EARLIEST_OCCURRED_AT.date()}: not a real call time")
    if value > latest_occurred_at():
        raise ValueError("is more than 1 hour in the future")
    return value


def json_length_bound(flat: dict[str, str | int | float | bool | None]) -> int:
    """At least the length of ``json.dumps(flat, separators=(",", ":"))``, cheaply.

    A character takes at most 12 in JSON (``\\uXXXX`` twice, for one outside the BMP); a
    float at most 24 (``-1.7976931348623157e+308``); true, false and null at most 5.
    """
    length = 2
    for key, item in flat.items():
        length += 12 * len(key) + 4  # quotes, colon, comma
        if isinstance(item, str):
            length += 12 * len(item) + 2
        elif isinstance(item, bool) or item is None:
            length += 5
        elif isinstance(item, int):
            length += len(str(item))
        else:
            length += 24
    return length


def check_attributes(attributes: dict[str, str]) -> None:
    """The attribute rules beyond "strings to strings"; ValueError naming the key if broken."""
    if len(attributes) > MAX_ATTRIBUTES:
        raise ValueError(f"has {len(attributes)} pairs, at most {MAX_ATTRIBUTES} are allowed")
    for key, value in attributes.items():
        if not ATTRIBUTE_KEY.fullmatch(key):
            raise ValueError(f"key {key!r} must match {ATTRIBUTE_KEY_RULE}")
        if not 1 <= len(value) <= MAX_ATTRIBUTE_VALUE:
            raise ValueError(f"value of {key!r} must be 1 to {MAX_ATTRIBUTE_VALUE} characters")


def check_thinking(thinking: int, output: int) -> None:
    """Thinking tokens are part of the output tokens, never more."""
    if thinking > output:
        raise ValueError("thinking_tokens must not exceed output_tokens (part of it)")


def cache_writes(total: int | None, five: int | None, hour: int | None) -> tuple[int, int, int]:
    """The cache-write total and its 5-minute / 1-hour split, filled in; None means absent.

    The API reports a total and, for newer models, a split. A total without a split is
    priced as 5-minute writes (the API's default TTL); a split without a total fills it.
    """
    if five is None and hour is None:
        return (total or 0, total or 0, 0)
    if total is None:
        return ((five or 0) + (hour or 0), five or 0, hour or 0)
    if total != (five or 0) + (hour or 0):
        raise ValueError(
            "cache_creation_input_tokens must equal cache_creation_5m_input_tokens "
            "+ cache_creation_1h_input_tokens"
        )
    return (total, five or 0, hour or 0)


class UsageEvent(BaseModel):
    """One Claude (or other LLM) API call, as published by a service."""

    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)

    schema_version: Literal[1, 2] = SCHEMA_VERSION
    event_id: uuid.UUID = Field(default_factory=uuid7, description="UUIDv7, the dedupe key")
    tenant_id: Annotated[str, Field(min_length=1, max_length=128)]
    occurred_at: AwareDatetime = Field(description="when the call was made (UTC)")
    source: Source
    source_id: ShortText = Field(description="conversation id or agent id")
    source_name: Annotated[str, Field(max_length=512)] | None = Field(
        None, description="conversation title or agent name; may arrive later via a rename"
    )
    model: Annotated[str, Field(min_length=1, max_length=128)]
    input_tokens: TokenCount = 0
    output_tokens: TokenCount = 0
    cache_creation_input_tokens: TokenCount = 0
    cache_creation_5m_input_tokens: TokenCount = 0
    cache_creation_1h_input_tokens: TokenCount = 0
    cache_read_input_tokens: TokenCount = 0
    # v2: the billing dimensions of the SDK's ``Usage``, same names and values; None (or
    # absent) means not reported, as the SDK's Optional fields allow: standard, no tools
    service_tier: ServiceTier | None = Field(
        default=None, description="usage.service_tier: standard, priority or batch"
    )
    speed: Speed | None = Field(default=None, description="usage.speed: standard or fast")
    inference_geo: Annotated[str, Field(max_length=32)] | None = Field(
        default=None, description="usage.inference_geo, e.g. 'global' or 'us' (US-only inference)"
    )
    web_search_requests: ToolRequests | None = Field(
        default=None, description="usage.server_tool_use.web_search_requests (billed per 1,000)"
    )
    web_fetch_requests: ToolRequests | None = Field(
        default=None, description="usage.server_tool_use.web_fetch_requests (no fee of its own)"
    )
    thinking_tokens: TokenCount | None = Field(
        default=None, description="usage.output_tokens_details.thinking_tokens, part of output"
    )
    duration_ms: Annotated[StrictInt, Field(ge=0, le=MAX_DURATION_MS)] = 0
    status: Status = Status.OK
    request_id: Annotated[str, Field(max_length=256)] | None = None
    metadata: dict[str, str | int | float | bool | None] = Field(default_factory=dict)
    attributes: dict[str, str] = Field(
        default_factory=dict,
        description="what the call is for, to group costs by: user, customer, feature, ...",
    )

    @field_validator("schema_version", mode="before")
    @classmethod
    def _integer_version(cls, value: Any) -> Any:
        """2.0 or "2" is no version, in an array as alone (``parse_call`` says so first)."""
        if type(value) is not int:
            raise ValueError(f"unsupported version {value!r}")
        return value

    @field_validator("occurred_at")
    @classmethod
    def _sane_time(cls, value: datetime) -> datetime:
        return _check_occurred_at(value)

    @field_validator("metadata", mode="before")
    @classmethod
    def _flat_metadata(cls, value: Any) -> Any:
        """One clear reason instead of one per member of the value union."""
        if isinstance(value, dict):
            for key, item in value.items():
                if not (item is None or isinstance(item, str | int | float | bool)):
                    raise ValueError(
                        f"value of {key!r} must be a string, number, boolean or null, "
                        f"not {type(item).__name__}"
                    )
        return value

    @field_validator("metadata")
    @classmethod
    def _small_metadata(cls, value: dict[str, Any]) -> dict[str, Any]:
        if json_length_bound(value) <= MAX_METADATA_BYTES:
            return value  # the common case: no need to encode it (runs once per event)
        if len(json.dumps(value, separators=(",", ":"))) > MAX_METADATA_BYTES:
            raise ValueError(f"is larger than {MAX_METADATA_BYTES} bytes as JSON")
        return value

    @field_validator("attributes", mode="before")
    @classmethod
    def _string_attributes(cls, value: Any) -> Any:
        """One clear reason naming the key instead of pydantic's per-type one.

        Keys are checked here, as sent, before the model strips white space from strings:
        ``" user"`` or ``"user\\n"`` is no ``user`` (and two keys can never collide once
        stripped). Values are stripped like every string of the contract, then checked.
        """
        if isinstance(value, dict):
            for key, item in value.items():
                if not isinstance(key, str) or not ATTRIBUTE_KEY.fullmatch(key):
                    raise ValueError(f"key {key!r} must match {ATTRIBUTE_KEY_RULE}")
                if not isinstance(item, str):
                    kind = type(item).__name__
                    raise ValueError(f"value of {key!r} must be a string, not {kind}")
        return value

    @field_validator("attributes")
    @classmethod
    def _valid_attributes(cls, value: dict[str, str]) -> dict[str, str]:
        check_attributes(value)
        return value

    @model_validator(mode="before")
    @classmethod
    def _consistent_counts(cls, data: Any) -> Any:
        """Version-1 events carry no v2 fields; thinking is part of output; cache writes add
        up (``cache_writes``). Runs once per event: plain lookups, no copy unless it fills in.
        """
        if not isinstance(data, dict):
            return data
        get = data.get
        if get("schema_version") == 1:
            extra = [name for name in V2_FIELDS if get(name) is not None]
            if extra:
                raise ValueError(
                    f"schema_version 1 has no field {', '.join(extra)}: send schema_version 2"
                )
        thinking = get("thinking_tokens")
        if type(thinking) is int:
            output = get("output_tokens", 0)
            if type(output) is int:
                check_thinking(thinking, output)
        total = get("cache_creation_input_tokens")
        five = get("cache_creation_5m_input_tokens")
        hour = get("cache_creation_1h_input_tokens")
        for value in (total, five, hour):
            if value is not None and (type(value) is not int or value < 0):
                return data  # let field validation name the offending field (and only that one)
        filled = cache_writes(total, five, hour)  # raises when they disagree
        if five is None and hour is None:
            if not total:
                return data  # the defaults (0, 0) already hold
            return {
                **data,
                "cache_creation_5m_input_tokens": filled[1],
                "cache_creation_1h_input_tokens": filled[2],
            }
        if total is None:
            return {**data, "cache_creation_input_tokens": filled[0]}
        return data

    @property
    def partition_key(self) -> bytes:
        """Kafka key: one tenant's conversation or agent always lands on one partition."""
        return f"{self.tenant_id}:{self.source_id}".encode()

    def to_json(self) -> bytes:
        """Wire JSON without the optional fields that are not set (smaller, and a v1 event
        stays a v1 event; without attributes, a worker older than them still reads it)."""
        unset = None if self.attributes else {"attributes"}
        return self.model_dump_json(exclude_none=True, exclude=unset).encode()


class CallEvent(Protocol):
    """What a valid call event offers its readers: a :class:`UsageEvent`, or the worker's
    faster decoding of the same JSON (``stream_processor/validate.py``), equal field by field.
    """

    schema_version: Literal[1, 2]
    event_id: uuid.UUID
    tenant_id: str
    occurred_at: datetime
    source: Source
    source_id: str
    source_name: str | None
    model: str
    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int
    cache_creation_5m_input_tokens: int
    cache_creation_1h_input_tokens: int
    cache_read_input_tokens: int
    service_tier: ServiceTier | None
    speed: Speed | None
    inference_geo: str | None
    web_search_requests: int | None
    web_fetch_requests: int | None
    thinking_tokens: int | None
    duration_ms: int
    status: Status
    request_id: str | None
    metadata: dict[str, str | int | float | bool | None]
    attributes: dict[str, str]


class EntityRenamed(BaseModel):
    """A conversation or agent got a (new) name; fills ``source_name`` after the fact."""

    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)

    schema_version: Literal[1, 2] = SCHEMA_VERSION
    event_id: uuid.UUID = Field(default_factory=uuid7)
    tenant_id: Annotated[str, Field(min_length=1, max_length=128)]
    source: Source
    source_id: ShortText
    name: Annotated[str, Field(min_length=1, max_length=512)]
    renamed_at: AwareDatetime = Field(default_factory=lambda: datetime.now(UTC))

    @field_validator("renamed_at")
    @classmethod
    def _sane_time(cls, value: datetime) -> datetime:
        return _check_occurred_at(value)

    @property
    def partition_key(self) -> bytes:
        return f"{self.tenant_id}:{self.source}:{self.source_id}".encode()

    def to_json(self) -> bytes:
        return self.model_dump_json().encode()


def encode_calls(events: list[UsageEvent]) -> bytes:
    """A calls-topic message value: a JSON array of events."""
    return b"[" + b",".join(e.to_json() for e in events) + b"]"


class ContractError(ValueError):
    """A message or one of its events breaks the contract; ``reason`` names the field."""

    def __init__(self, reason: str, index: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.index = index


def describe_validation_error(exc: ValidationError) -> str:
    """A one-line reason that names each failing field, for dead letters and callers."""
    parts = []
    for err in exc.errors(include_url=False, include_input=False):
        where = ".".join(str(p) for p in err["loc"]) or "event"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


def decode_calls(value: bytes) -> list[Any]:
    """Split a calls-topic message into raw (not yet validated) event objects.

    Raises :class:`ContractError` when the message itself is unusable (not JSON, not an
    object or array, unknown schema version on a single object).
    """
    try:
        payload = json.loads(value)
    except (ValueError, RecursionError) as exc:  # also an integer of 4,300+ digits, deep nesting
        raise ContractError(f"not valid JSON: {exc}") from exc
    if isinstance(payload, dict):
        return [payload]
    if isinstance(payload, list):
        return payload
    raise ContractError(f"expected a JSON object or array, got {type(payload).__name__}")


def parse_call(raw: Any) -> UsageEvent:
    """Validate one raw event object; :class:`ContractError` names the failing fields."""
    if not isinstance(raw, dict):
        raise ContractError(f"event must be a JSON object, got {type(raw).__name__}")
    version = raw.get("schema_version", SCHEMA_VERSION)
    if type(version) is not int or version not in SUPPORTED_SCHEMA_VERSIONS:
        raise ContractError(f"schema_version: unsupported version {version!r}")
    try:
        return UsageEvent.model_validate(raw)
    except ValidationError as exc:
        raise ContractError(describe_validation_error(exc)) from exc
