"""Anthropic client instrumentation: every Messages API call becomes one usage event.

:func:`instrument` patches one ``anthropic.Anthropic`` / ``AsyncAnthropic`` *instance* in
place (its type, methods and return values stay exactly the SDK's) by wrapping the
``_post`` of its ``messages`` resource, the single path through which ``create``,
``create(stream=True)``, ``stream()``, ``parse()`` and ``with_raw_response`` reach
``POST /v1/messages`` (``client.beta.messages`` is wrapped the same way). Non-streaming
calls are recorded from ``Message.usage``; streams from the ``message_start`` /
``message_delta`` events as the caller consumes them, so the final usage (cache tokens,
server-tool requests and thinking tokens included) is the one the API reported. A failed
call publishes ``status=error`` with whatever tokens the API had reported before failing.

Every field of ``Usage`` that changes the bill goes into the contract's field of the same
name (``service_tier``, ``speed``, ``inference_geo``, ``web_search_requests``,
``web_fetch_requests``, ``thinking_tokens``). A value the contract rejects (a tier a newer
API introduced, say) never costs us the call: the event is published with that field at
its default, a warning is logged and the raw value is kept as ``metadata["<field>_raw"]``.

Message Batches: iterating ``messages.batches.results(batch_id)`` (and the beta one)
publishes one event per *succeeded* result, as the caller reads it, at the batch tier, with
a deterministic ``event_id`` (from the batch id and ``custom_id``) so that reading results
twice is deduplicated downstream. ``custom_id`` carries the attribution: see
:func:`batch_custom_id`. Errored, expired and canceled requests are not billed and publish
nothing (they are counted in a log line). The batches resources' ``results`` and
``retrieve`` are wrapped: the batch that ``results()`` retrieves for its ``results_url`` is
kept for its ``ended_at``, so no request is added.

Attribution (tenant, source, conversation/agent id and name) comes from ``instrument()``
defaults overlaid with :func:`usage_context`, a context variable, so one shared client
serves many conversations and concurrent asyncio tasks keep their own tags. Publishing
never raises into the caller: a usage event that cannot be built or queued is logged.

Attributes (what a call is for, to group costs by: the well-known keys
(:data:`~producers.contract.WELL_KNOWN_ATTRIBUTES`) ``user``, ``customer``, ``feature``,
``environment``, ``prompt_version``, ``session``, or any key of the contract's rules) come
from three places, merged key by key, the nearer one winning:

1. per call, ``llm_usage_attributes={"user": "u-42"}`` on ``messages.create``,
   ``messages.stream``, ``messages.parse`` (and their beta, ``with_raw_response`` and
   ``with_streaming_response`` forms) or ``messages.batches.results``; it is removed before
   the SDK sees the call and never reaches the API (the SDK's typed signatures do not
   know it: a type checker wants ``# type: ignore[call-overload]`` there, or
   ``**{CALL_ATTRIBUTES_ARG: {...}}``; a :func:`usage_attributes` block needs neither);
2. the enclosing :func:`usage_attributes` (or ``usage_context(attributes=...)``) blocks,
   inner blocks over outer ones; a context variable, so sync, async and streaming calls
   and concurrent tasks each see their own;
3. ``instrument(client, ..., attributes={...})`` for every call of the client.

A Message Batches result's ``batch_attribution`` tags may carry attributes too; they win
over all three. Attributes given to ``instrument()`` are checked at once, at start-up
(ValueError naming the key). Those of a block or a call sit in the application's request
path and never raise: an integer value (not a bool) is taken as its digits
(``user=request.user.id``), any other pair the event contract would refuse (an empty or too
long value, a key off its rule) is left out with a warning naming the key and why, and the
call goes ahead. Together at most :data:`~producers.contract.MAX_ATTRIBUTES` are published:
the per-call ones first, then the blocks' and the client's from the innermost out; a
warning names any left out.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import inspect
import json
import logging
import re
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, TypeVar, overload

import anthropic
from anthropic import APIStatusError, AsyncStream, Stream
from anthropic._constants import RAW_RESPONSE_HEADER
from anthropic._decoders.jsonl import AsyncJSONLDecoder, JSONLDecoder
from anthropic._response import APIResponse, AsyncAPIResponse
from anthropic.types import Message
from anthropic.types.beta import BetaMessage
from anthropic.types.beta.messages import BetaMessageBatch
from anthropic.types.messages import MessageBatch
from pydantic import ValidationError

from producers.budget_guard import BudgetGuard
from producers.contract import (
    MAX_ATTRIBUTES,
    V2_FIELDS,
    ServiceTier,
    Source,
    Status,
    UsageEvent,
    check_attributes,
    describe_validation_error,
)

log = logging.getLogger(__name__)

MetadataValue = str | int | float | bool | None
UNATTRIBUTED = "unattributed"
_MESSAGES_PATH = "/v1/messages"
_MARK = "_llm_usage_instrumented"
# The per-call argument: ``client.messages.create(..., llm_usage_attributes={"user": "u1"})``.
CALL_ATTRIBUTES_ARG = "llm_usage_attributes"
# Carries a call's attributes from the wrapped method to the wrapped ``_post`` (which takes
# it off again): the only way through ``stream()`` and the raw/streaming response wrappers.
_ATTRIBUTES_HEADER = "x-llm-usage-attributes"
ClientT = TypeVar("ClientT", anthropic.Anthropic, anthropic.AsyncAnthropic)


class SyncSink(Protocol):
    def publish(self, event: UsageEvent) -> None: ...


class AsyncSink(Protocol):
    def publish(self, event: UsageEvent) -> Awaitable[None] | None: ...


@dataclass(frozen=True)
class UsageTags:
    """Who a call is billed to; ``None`` fields are taken from the enclosing tags."""

    tenant_id: str | None = None
    source: Source | str | None = None
    source_id: str | None = None
    source_name: str | None = None
    metadata: Mapping[str, MetadataValue] = field(default_factory=dict)
    attributes: Mapping[str, str] = field(default_factory=dict)

    def overlay(self, other: UsageTags) -> UsageTags:
        """``other``'s set fields win; metadata and attributes are merged (``other``'s win).

        Merged attributes are in the order they were set, outermost first: ``other``'s come
        last, a key it sets again included (so the innermost are the last ones).
        """
        changes: dict[str, Any] = {
            k: getattr(other, k)
            for k in ("tenant_id", "source", "source_id", "source_name")
            if getattr(other, k) is not None
        }
        if other.metadata:
            changes["metadata"] = {**self.metadata, **other.metadata}
        if other.attributes:
            outer = {k: v for k, v in self.attributes.items() if k not in other.attributes}
            changes["attributes"] = {**outer, **other.attributes}
        return replace(self, **changes)


def checked_attributes(attributes: Mapping[str, Any] | None, where: str) -> dict[str, str]:
    """``attributes`` as the event contract will take them (values stripped of surrounding
    blanks, as it strips them; keys must match its rule as given); ValueError naming
    ``where`` and the key when the contract would refuse them. The strict check, for
    ``instrument()`` at start-up; the request path uses :func:`_lenient_attributes`."""
    if attributes is None:
        return {}
    if not isinstance(attributes, Mapping):
        raise ValueError(f"{where}: attributes must be a mapping, not {type(attributes).__name__}")
    checked: dict[str, str] = {}
    for key, value in attributes.items():
        if not isinstance(key, str):
            raise ValueError(f"{where}: attribute key {key!r} must be a string")
        if not isinstance(value, str):
            kind = type(value).__name__
            raise ValueError(f"{where}: value of attribute {key!r} must be a string, not {kind}")
        checked[key] = value.strip()
    try:
        check_attributes(checked)
    except ValueError as exc:
        raise ValueError(f"{where}: attributes: {exc}") from None
    return checked


def _lenient_attributes(attributes: Any, where: str, *, after: str = "") -> dict[str, str]:
    """The valid pairs of ``attributes`` (at most MAX_ATTRIBUTES, the first given); never
    raises. An integer (not a bool) is taken as its digits (``request.user.id``); any other
    bad pair is left out with one warning naming the key and why (``after`` ends it)."""
    if attributes is None:
        return {}
    if not isinstance(attributes, Mapping):
        log.warning("%s: attributes must be a mapping, ignored: %r%s", where, attributes, after)
        return {}
    usable: dict[str, str] = {}
    for key, value in attributes.items():
        if type(value) is not bool and isinstance(value, int):
            # its digits; "" (refused, naming the key) past what str() may convert or 256 fit
            value = str(value) if value.bit_length() <= 1024 else ""
        try:
            usable.update(checked_attributes({key: value}, where))
        except ValueError as exc:
            log.warning("%s; that attribute is left out%s", exc, after)
    if len(usable) > MAX_ATTRIBUTES:
        dropped = list(usable)[MAX_ATTRIBUTES:]
        log.warning(
            "%s: more than %d attributes, left out: %s%s", where, MAX_ATTRIBUTES, dropped, after
        )
        usable = dict(list(usable.items())[:MAX_ATTRIBUTES])
    return usable


_GOES_AHEAD = ", the call goes ahead"


_context: ContextVar[UsageTags | None] = ContextVar("llm_usage_tags", default=None)
_NO_TAGS = UsageTags()


def current_tags() -> UsageTags:
    """The tags set by the enclosing :func:`usage_context` blocks."""
    return _context.get() or _NO_TAGS


@contextlib.contextmanager
def usage_context(
    *,
    tenant_id: str | None = None,
    source: Source | str | None = None,
    source_id: str | None = None,
    source_name: str | None = None,
    metadata: Mapping[str, MetadataValue] | None = None,
    attributes: Mapping[str, str | int] | None = None,
) -> Iterator[UsageTags]:
    """Tag every instrumented call made inside the block (thread- and task-local).

    ``attributes`` are merged into the enclosing blocks' (these win). They never raise (the
    block sits in the application's request path): an integer value (not a bool) is taken
    as its digits, any other pair the event contract would refuse is left out with a
    warning naming the key and why, and over :data:`~producers.contract.MAX_ATTRIBUTES`
    together the innermost are kept (this block's, then the nearest enclosing ones').
    """
    checked = _lenient_attributes(attributes, "usage_context", after=", the block goes ahead")
    tags = UsageTags(tenant_id, source, source_id, source_name, dict(metadata or {}), checked)
    merged = current_tags().overlay(tags)
    if len(merged.attributes) > MAX_ATTRIBUTES:
        # in the order they were set, outermost first: keep the last (innermost) ones
        names = list(merged.attributes)
        dropped = names[: len(names) - MAX_ATTRIBUTES]
        kept = {k: merged.attributes[k] for k in names[-MAX_ATTRIBUTES:]}
        log.warning(
            "usage_context: %d attributes with the enclosing blocks', at most %d are kept "
            "(the innermost); left out: %s",
            len(names),
            MAX_ATTRIBUTES,
            dropped,
        )
        merged = replace(merged, attributes=kept)
    token = _context.set(merged)
    try:
        yield merged
    finally:
        _context.reset(token)


@contextlib.contextmanager
def usage_attributes(
    attributes: Mapping[str, str | int] | None = None, /, **more: str | int
) -> Iterator[Mapping[str, str]]:
    """Attributes for every instrumented call made inside the block, e.g.
    ``with usage_attributes(user=request.user.id, feature="search"):`` (keys with dots, such
    as ``"team.id"``, in a mapping: ``usage_attributes({"team.id": "t7"})``). The keys with
    a documented meaning are :data:`~producers.contract.WELL_KNOWN_ATTRIBUTES` (``user``,
    ``customer``, ``feature``, ``environment``, ``prompt_version``, ``session``); any other
    key of the contract's rules is welcome too.

    Nested blocks merge, the inner value of a key winning; a call's own
    ``llm_usage_attributes`` win over both. Works for sync, async and streaming calls (a
    context variable: concurrent tasks keep their own). Never raises, like
    :func:`usage_context`: an integer value becomes its digits (``42`` -> ``"42"``), a pair
    the event contract would refuse (an empty or 257-character value, a key such as
    ``"User"``) is left out with a warning naming the key, and over 16 together the
    innermost are kept. Yields the blocks' merged attributes.
    """
    given: dict[str, Any] = {}
    if isinstance(attributes, Mapping):
        given.update(attributes)
    elif attributes is not None:
        log.warning("usage_attributes: attributes must be a mapping, ignored: %r", attributes)
    given.update(more)
    with usage_context(attributes=given) as tags:
        yield tags.attributes


# --- recording one call ----------------------------------------------------------------
_COUNTS = (
    "input_tokens",
    "output_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
)
_DETAIL_COUNTS = (  # (Usage attribute, its count) -> the contract field of the count's name
    ("server_tool_use", "web_search_requests"),
    ("server_tool_use", "web_fetch_requests"),
    ("output_tokens_details", "thinking_tokens"),
)
_LABELS = ("service_tier", "speed", "inference_geo")
_MAX_RAW_CHARS = 256


class _Call:
    """What we learn about one API call while it runs; turns into one UsageEvent."""

    def __init__(
        self,
        tags: UsageTags,
        body: Mapping[str, Any],
        stream: bool,
        attributes: Mapping[str, str] | None = None,
    ) -> None:
        self.tags = tags
        self.call_attributes = dict(attributes or {})  # the call's own: win over the tags'
        self.model = str(body.get("model") or "unknown")
        self.stream = stream
        self.occurred_at = datetime.now(UTC)
        self.started = time.monotonic()
        self.usage: dict[str, int] = {}
        self.labels: dict[str, Any] = {}  # service_tier, speed, inference_geo as reported
        self.request_id: str | None = None
        self.extra: dict[str, MetadataValue] = {"stream": stream}
        self.finished = False
        self.complete = not stream
        self.default_tier = ServiceTier.STANDARD
        self.event_id: uuid.UUID | None = None  # None: a fresh UUIDv7
        self.duration_ms: int | None = None  # None: measured

    def observe_usage(self, usage: Any) -> None:
        """Record a ``Usage`` / ``MessageDeltaUsage``; later reports are cumulative totals."""
        for name in _COUNTS:
            value = getattr(usage, name, None)
            if isinstance(value, int):
                self.usage[name] = value
        for parent, name in _DETAIL_COUNTS:
            value = getattr(getattr(usage, parent, None), name, None)
            if isinstance(value, int):
                self.usage[name] = value
        split = getattr(usage, "cache_creation", None)
        five = getattr(split, "ephemeral_5m_input_tokens", None)
        hour = getattr(split, "ephemeral_1h_input_tokens", None)
        if isinstance(five, int) and isinstance(hour, int):
            self.usage["cache_creation_5m_input_tokens"] = five
            self.usage["cache_creation_1h_input_tokens"] = hour
        for name in _LABELS:
            if (value := getattr(usage, name, None)) is not None:
                self.labels[name] = value

    def observe_message(self, message: Any) -> None:
        self.model = str(getattr(message, "model", None) or self.model)
        if (usage := getattr(message, "usage", None)) is not None:
            self.observe_usage(usage)
        if (stop := getattr(message, "stop_reason", None)) is not None:
            self.extra["stop_reason"] = str(stop)
        if self.request_id is None:
            self.request_id = getattr(message, "_request_id", None)

    def observe_event(self, event: Any) -> None:
        kind = getattr(event, "type", None)
        if kind == "message_start":
            self.observe_message(event.message)
        elif kind == "message_delta":
            self.observe_usage(event.usage)
            stop = getattr(event.delta, "stop_reason", None)
            if stop is not None:
                self.extra["stop_reason"] = str(stop)
        elif kind == "message_stop":
            self.complete = True

    def observe_error(self, exc: BaseException) -> None:
        self.extra["error_type"] = type(exc).__name__
        if isinstance(exc, APIStatusError):
            self.extra["http_status"] = exc.status_code
            self.request_id = self.request_id or exc.request_id

    def _counts(self) -> dict[str, int]:
        """Token counts as reported, minus a cache split that does not add up."""
        usage = dict(self.usage)
        five = usage.get("cache_creation_5m_input_tokens")
        hour = usage.get("cache_creation_1h_input_tokens")
        total = usage.get("cache_creation_input_tokens")
        if five is not None and hour is not None and total is not None and total != five + hour:
            usage.pop("cache_creation_5m_input_tokens")  # inconsistent split: keep the total
            usage.pop("cache_creation_1h_input_tokens")
        return usage

    def _duration_ms(self) -> int:
        if self.duration_ms is not None:
            return self.duration_ms
        return max(0, round((time.monotonic() - self.started) * 1000))

    def _attributes(self) -> dict[str, str]:
        """The call's own attributes over the tags'; when over the limit, the call's first,
        then the tags' from the innermost out (they are in the order they were set)."""
        merged = {**self.tags.attributes, **self.call_attributes}
        if len(merged) <= MAX_ATTRIBUTES:
            return merged
        kept = dict(self.call_attributes)
        for key, value in reversed(list(self.tags.attributes.items())):
            if len(kept) < MAX_ATTRIBUTES and key not in kept:
                kept[key] = value
        log.warning(
            "usage of a %s call: %d attributes together, at most %d are published; left out: %s",
            self.model,
            len(merged),
            MAX_ATTRIBUTES,
            sorted(set(merged) - set(kept)),
        )
        return kept

    def event(self, status: Status) -> UsageEvent | None:
        """The usage event, or None (logged) when attribution is missing or invalid."""
        tags = self.tags
        if not tags.tenant_id or not tags.source:
            log.error(
                "usage of a %s call not published: no tenant_id/source; pass them to "
                "instrument() or usage_context()",
                self.model,
            )
            return None
        if self.stream and not self.complete:
            self.extra["incomplete"] = True
        data: dict[str, Any] = {
            "tenant_id": tags.tenant_id,
            "occurred_at": self.occurred_at,
            "source": tags.source,
            "source_id": tags.source_id or UNATTRIBUTED,
            "source_name": tags.source_name,
            "model": self.model,
            **self._counts(),
            "service_tier": self.default_tier,
            **self.labels,
            "duration_ms": self._duration_ms(),
            "status": status,
            "request_id": self.request_id,
            "metadata": {**tags.metadata, **self.extra},
        }
        attributes = self._attributes()
        if attributes:
            data["attributes"] = attributes
        if self.default_tier is ServiceTier.BATCH:  # a batch result is billed at batch prices
            reported = self.labels.get("service_tier")
            if reported not in (None, ServiceTier.BATCH):
                data["metadata"]["service_tier_reported"] = str(reported)
            data["service_tier"] = ServiceTier.BATCH
        if self.event_id is not None:
            data["event_id"] = self.event_id
        return _validated(data, self.default_tier)


def _validated(data: dict[str, Any], default_tier: ServiceTier) -> UsageEvent | None:
    """Validate with the contract; billing dimensions it rejects are demoted, not fatal.

    A newer API may report a tier or speed this contract does not know yet. Losing the call
    would undercount far more than pricing it at the default: publish it at the default
    with the raw value in metadata (and a warning), so it can be found and repriced.
    """
    thinking, output = data.get("thinking_tokens"), data.get("output_tokens", 0)
    if isinstance(thinking, int) and isinstance(output, int) and thinking > output:
        data = _demote(data, {"thinking_tokens"}, default_tier)  # a model-level rule
    try:
        return UsageEvent.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False)
        rejected = {str(e["loc"][0]) for e in errors if e["loc"] and e["loc"][0] in _DEMOTABLE}
        if not rejected:
            _log_invalid(data, exc)
            return None
        data = _demote(data, rejected, default_tier)
    try:
        return UsageEvent.model_validate(data)
    except ValidationError as exc:
        _log_invalid(data, exc)
        return None


_DEMOTABLE = (*V2_FIELDS, "attributes")  # what a call is published without, rather than lost


def _demote(data: dict[str, Any], names: set[str], default_tier: ServiceTier) -> dict[str, Any]:
    """``data`` with ``names`` at their defaults and their raw values in metadata."""
    data, metadata = dict(data), dict(data["metadata"])
    for name in sorted(names):
        value = data.pop(name)
        if name == "attributes":  # checked before, so only a bug gets here: keep the call
            log.warning("usage of a %s call published without its attributes", data.get("model"))
            continue
        raw = value if isinstance(value, int | float | str) else str(value)
        metadata[f"{name}_raw"] = raw[:_MAX_RAW_CHARS] if isinstance(raw, str) else raw
        log.warning(
            "usage of a %s call: %s=%r is not accepted by the event contract; published with "
            "the default and the value in metadata[%r]",
            data.get("model"),
            name,
            value,
            f"{name}_raw",
        )
    if "service_tier" in names:
        data["service_tier"] = default_tier
    data["metadata"] = metadata
    return data


def _log_invalid(data: Mapping[str, Any], exc: ValidationError) -> None:
    reason = describe_validation_error(exc)
    log.error("usage event for a %s call is invalid, not published: %s", data.get("model"), reason)


# --- Message Batches -----------------------------------------------------------------------
BatchAttribution = Callable[[str], UsageTags | None]
_SEP = "__"
_CUSTOM_ID_MAX = 64
_CUSTOM_ID_CHARS = re.compile(r"[a-zA-Z0-9_-]+")  # the API's custom_id alphabet
_SOURCES = frozenset(s.value for s in Source)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class BatchCustomId:
    """What :func:`batch_custom_id` put into a custom_id."""

    source: Source
    source_id: str
    index: int


def batch_custom_id(source: Source | str, source_id: str, index: int) -> str:
    """``<source>__<source_id>__<index>``, e.g. ``memory__conv-42__0``: attributed by itself.

    The API allows ``^[a-zA-Z0-9_-]{1,64}$`` (no colons), so ``source_id`` must use those
    characters and leave room for the rest; ids that do not fit need a
    ``batch_attribution`` of your own (see :func:`instrument`). ``index`` keeps several
    requests of one conversation apart (custom_ids are unique per batch).
    """
    kind = Source(source)
    if isinstance(index, bool) or not isinstance(index, int) or index < 0:
        raise ValueError(f"index must be an int >= 0, not {index!r}")
    if not _CUSTOM_ID_CHARS.fullmatch(source_id):
        raise ValueError(f"source_id {source_id!r} has characters a custom_id cannot carry")
    custom_id = f"{kind.value}{_SEP}{source_id}{_SEP}{index}"
    if len(custom_id) > _CUSTOM_ID_MAX:
        raise ValueError(f"custom_id {custom_id!r} is longer than {_CUSTOM_ID_MAX} characters")
    return custom_id


def parse_batch_custom_id(custom_id: str) -> BatchCustomId | None:
    """The reverse of :func:`batch_custom_id`; None for ids that do not follow it.

    The source is everything before the first ``__`` and the index after the last, so a
    ``source_id`` may itself contain ``__``.
    """
    source, sep, rest = custom_id.partition(_SEP)
    source_id, sep2, index = rest.rpartition(_SEP)
    if not (sep and sep2 and source in _SOURCES and index.isascii() and index.isdigit()):
        return None
    if not _CUSTOM_ID_CHARS.fullmatch(source_id):
        return None
    return BatchCustomId(Source(source), source_id, int(index))


def tags_from_custom_id(custom_id: str) -> UsageTags | None:
    """The default ``batch_attribution``: source and source_id from the convention."""
    parsed = parse_batch_custom_id(custom_id)
    return None if parsed is None else UsageTags(source=parsed.source, source_id=parsed.source_id)


def batch_event_id(batch_id: str, custom_id: str, ended_at: datetime | None) -> uuid.UUID:
    """A UUIDv7-shaped id that is a pure function of the batch request.

    Time bits: the batch's ``ended_at`` (ms); the other 74 bits: SHA-256 of the batch id
    and custom_id. Reading results again yields the same ids, which the worker drops as
    duplicates. Without ``ended_at`` the time bits come from the hash too.
    """
    digest = hashlib.sha256(f"{batch_id}\n{custom_id}".encode()).digest()
    rand = int.from_bytes(digest[:10], "big")
    if ended_at is not None:
        millis = (ended_at.astimezone(UTC) - _EPOCH) // timedelta(milliseconds=1)
    else:
        millis = int.from_bytes(digest[10:16], "big")
    value = (millis & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76  # version 7
    value |= ((rand >> 62) & 0xFFF) << 64  # rand_a
    value |= 0b10 << 62  # RFC 4122 variant
    value |= rand & ((1 << 62) - 1)  # rand_b
    return uuid.UUID(int=value)


class _BatchReader:
    """Turns the lines of one batch's results file into usage events (succeeded ones only)."""

    def __init__(
        self,
        batch_id: str,
        batch: Any,
        tags: UsageTags,
        attribution: BatchAttribution,
        attributes: Mapping[str, str] | None = None,
    ) -> None:
        self.batch_id = batch_id
        self.attributes = dict(attributes or {})  # results()'s llm_usage_attributes
        ended_at = getattr(batch, "ended_at", None)
        self.ended_at = ended_at if isinstance(ended_at, datetime) else None
        self.tags = tags
        self.attribution = attribution
        self.counts: Counter[str] = Counter()
        if self.ended_at is None:
            log.warning(
                "batch %s: ended_at unknown (the SDK's results() no longer retrieves the "
                "batch?); its usage events are stamped with the time they are read",
                batch_id,
            )

    def call(self, line: Any) -> _Call | None:
        """The billed call of one results line; None for results the API does not bill."""
        result = getattr(line, "result", None)
        kind = str(getattr(result, "type", None) or "unknown")
        self.counts[kind] += 1
        if kind != "succeeded":  # errored, expired, canceled: not billed
            return None
        custom_id = str(getattr(line, "custom_id", None) or "")
        tags = self.tags.overlay(UsageTags(attributes=self.attributes))
        call = _Call(tags.overlay(self._attribute(custom_id)), {}, stream=False)
        call.default_tier = ServiceTier.BATCH
        call.event_id = batch_event_id(self.batch_id, custom_id, self.ended_at)
        call.occurred_at = self.ended_at or call.occurred_at
        call.duration_ms = 0  # no latency of its own; the batch's wait is not the call's
        call.extra.update(batch_id=self.batch_id, custom_id=custom_id)
        call.observe_message(getattr(result, "message", None))
        return call

    def _attribute(self, custom_id: str) -> UsageTags:
        try:
            tags = self.attribution(custom_id)
        except Exception:
            log.exception("batch_attribution failed for custom_id %r", custom_id)
            tags = None
        return tags or _NO_TAGS

    def summary(self) -> None:
        published = self.counts.get("succeeded", 0)
        unbilled = {k: v for k, v in sorted(self.counts.items()) if k != "succeeded"}
        log.info(
            "batch %s: %d succeeded results published; not billed, not published: %s",
            self.batch_id,
            published,
            unbilled or "none",
        )


_batches_seen: ContextVar[dict[str, Any] | None] = ContextVar("llm_usage_batches", default=None)


@contextlib.contextmanager
def _capturing_batches() -> Iterator[dict[str, Any]]:
    """Collect the batches ``retrieve()`` returns inside the block (results() calls it)."""
    seen: dict[str, Any] = {}
    token = _batches_seen.set(seen)
    try:
        yield seen
    finally:
        _batches_seen.reset(token)


def _remember_batch(batch: Any) -> None:
    seen = _batches_seen.get()
    if seen is not None and isinstance(batch, MessageBatch | BetaMessageBatch):
        seen[batch.id] = batch


def _batch_id(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> str:
    return str(args[0] if args else kwargs.get("message_batch_id", ""))


def _raw_results(kwargs: Mapping[str, Any]) -> bool:
    """Whether ``results()`` was called through ``with_raw_response`` (not streaming)."""
    headers = kwargs.get("extra_headers")
    return isinstance(headers, Mapping) and headers.get(RAW_RESPONSE_HEADER) == "raw"


def _billed_call(reader: _BatchReader, line: Any) -> _Call | None:
    """``reader.call(line)``; a line we cannot make sense of is logged, never raised."""
    try:
        return reader.call(line)
    except Exception:
        log.exception("usage of a result of batch %s not published", reader.batch_id)
        return None


# --- publishing without ever raising into the caller ------------------------------------
def _emit_sync(sink: SyncSink, call: _Call, status: Status) -> None:
    if call.finished:
        return
    call.finished = True
    event = call.event(status)
    if event is None:
        return
    try:
        sink.publish(event)
    except Exception:
        log.exception("could not publish a usage event (request %s)", call.request_id)


async def _emit_async(sink: AsyncSink, call: _Call, status: Status) -> None:
    if call.finished:
        return
    call.finished = True
    event = call.event(status)
    if event is None:
        return
    try:
        result = sink.publish(event)
        if inspect.isawaitable(result):
            await result
    except Exception:
        log.exception("could not publish a usage event (request %s)", call.request_id)


def _request_id(response: Any) -> str | None:
    headers = getattr(response, "headers", None)
    return headers.get("request-id") if headers is not None else None


def _raw_mode(kwargs: Mapping[str, Any]) -> str | None:
    options = kwargs.get("options") or {}
    headers = options.get("headers") if isinstance(options, Mapping) else None
    value = headers.get(RAW_RESPONSE_HEADER) if isinstance(headers, Mapping) else None
    return str(value) if value is not None else None


# --- per-call attributes -------------------------------------------------------------------
_CALL_METHODS = ("create", "stream", "parse")  # every messages method that POSTs /v1/messages


def _accept_call_attributes(messages: Any) -> None:
    """Let ``create``/``stream``/``parse`` of one messages resource take the per-call
    argument: popped before the SDK's method sees it, handed to ``_post`` in a header that
    ``_post`` takes off again (``stream()`` only calls ``_post`` when its block is entered)."""
    for name in _CALL_METHODS:
        method = getattr(messages, name, None)
        if method is not None:
            setattr(messages, name, _taking_call_attributes(method))
    for cached in ("with_raw_response", "with_streaming_response"):
        messages.__dict__.pop(cached, None)  # built again around the wrapped methods


def _taking_call_attributes(method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def call(*args: Any, **kwargs: Any) -> Any:
        given = kwargs.pop(CALL_ATTRIBUTES_ARG, None)
        if given is not None:
            usable = _lenient_attributes(given, CALL_ATTRIBUTES_ARG, after=_GOES_AHEAD)
            if usable:
                headers = dict(kwargs.get("extra_headers") or {})
                headers[_ATTRIBUTES_HEADER] = json.dumps(usable)
                kwargs["extra_headers"] = headers
        return method(*args, **kwargs)  # an async method's coroutine is returned unawaited

    return call


def _take_call_attributes(kwargs: dict[str, Any]) -> dict[str, str]:
    """Remove the attributes header from ``_post``'s options; the attributes it carried."""
    options = kwargs.get("options")
    headers = options.get("headers") if isinstance(options, Mapping) else None
    if not isinstance(options, Mapping) or not isinstance(headers, Mapping):
        return {}
    encoded = headers.get(_ATTRIBUTES_HEADER)
    if encoded is None:
        return {}
    rest = {k: v for k, v in headers.items() if k != _ATTRIBUTES_HEADER}
    kwargs["options"] = {**options, "headers": rest}
    try:
        return dict(json.loads(encoded))
    except (TypeError, ValueError):
        return {}


def _results_attributes(kwargs: dict[str, Any]) -> dict[str, str]:
    """``batches.results()``'s per-call attributes, popped (the SDK's method has no such
    argument)."""
    given = kwargs.pop(CALL_ATTRIBUTES_ARG, None)
    return _lenient_attributes(given, CALL_ATTRIBUTES_ARG, after=_GOES_AHEAD)


# --- sync client -------------------------------------------------------------------------
def _watch_stream(stream: Stream[Any], call: _Call, sink: SyncSink) -> None:
    """Observe a Stream's events as the caller reads them; publish at its end or close."""
    call.request_id = _request_id(stream.response)
    inner = stream._iterator

    def observed() -> Iterator[Any]:
        try:
            for item in inner:
                call.observe_event(item)
                yield item
        except GeneratorExit:
            _emit_sync(sink, call, Status.OK)
            raise
        except BaseException as exc:
            call.observe_error(exc)
            _emit_sync(sink, call, Status.ERROR)
            raise
        _emit_sync(sink, call, Status.OK)

    original_close = stream.close

    def close() -> None:
        try:
            original_close()
        finally:
            _emit_sync(sink, call, Status.OK)

    stream._iterator = observed()  # type: ignore[misc]
    stream.close = close  # type: ignore[method-assign]


def _record_result(result: Any, call: _Call, sink: SyncSink, raw: str | None) -> None:
    if isinstance(result, Stream):
        _watch_stream(result, call, sink)
    elif isinstance(result, Message | BetaMessage):
        call.observe_message(result)
        _emit_sync(sink, call, Status.OK)
    elif isinstance(result, APIResponse) and raw == "raw":
        call.request_id = _request_id(result.http_response)
        _record_result(result.parse(), call, sink, None)  # parse() is cached: caller gets it
    else:  # with_streaming_response: reading the body here would change what the caller sees
        log.debug("usage of a %s call not recorded (response type %s)", call.model, type(result))


def _patch_sync(
    client: anthropic.Anthropic,
    sink: SyncSink,
    defaults: UsageTags,
    attribution: BatchAttribution,
    guard: BudgetGuard | None,
) -> None:
    _patch_sync_resource(client.messages, sink, defaults, guard)
    _patch_sync_resource(client.beta.messages, sink, defaults, guard)
    _accept_call_attributes(client.messages)
    _accept_call_attributes(client.beta.messages)
    _patch_sync_batches(client.messages.batches, sink, defaults, attribution)
    _patch_sync_batches(client.beta.messages.batches, sink, defaults, attribution)


def _guarded(guard: BudgetGuard | None, tags: UsageTags) -> None:
    """Refuse the call (:class:`BudgetExceeded`) if a used-up hard budget covers it."""
    if guard is not None:
        source = tags.source.value if isinstance(tags.source, Source) else tags.source
        guard.check(tags.tenant_id, source, tags.source_id)


def _patch_sync_resource(
    messages: Any, sink: SyncSink, defaults: UsageTags, guard: BudgetGuard | None
) -> None:
    original_post: Callable[..., Any] = messages._post

    def _post(path: str, *args: Any, **kwargs: Any) -> Any:
        attributes = _take_call_attributes(kwargs)  # whatever the path: never sent
        if path != _MESSAGES_PATH:
            return original_post(path, *args, **kwargs)
        body = kwargs.get("body") or {}
        tags = defaults.overlay(current_tags())
        call = _Call(tags, body, bool(kwargs.get("stream")), attributes)
        _guarded(guard, call.tags)
        try:
            result = original_post(path, *args, **kwargs)
        except BaseException as exc:
            call.observe_error(exc)
            _emit_sync(sink, call, Status.ERROR)
            raise
        _record_result(result, call, sink, _raw_mode(kwargs))
        return result

    messages._post = _post


def _watch_batch_results(decoder: JSONLDecoder[Any], reader: _BatchReader, sink: SyncSink) -> None:
    """Publish each succeeded result as the caller reads it (before handing it over)."""
    inner = decoder._iterator

    def observed() -> Iterator[Any]:
        try:
            for line in inner:
                if (call := _billed_call(reader, line)) is not None:
                    _emit_sync(sink, call, Status.OK)
                yield line
        finally:
            reader.summary()

    decoder._iterator = observed()  # type: ignore[misc]


def _patch_sync_batches(
    batches: Any, sink: SyncSink, defaults: UsageTags, attribution: BatchAttribution
) -> None:
    original_retrieve: Callable[..., Any] = batches.retrieve
    original_results: Callable[..., Any] = batches.results

    def retrieve(*args: Any, **kwargs: Any) -> Any:
        batch = original_retrieve(*args, **kwargs)
        _remember_batch(batch)
        return batch

    def results(*args: Any, **kwargs: Any) -> Any:
        tags = defaults.overlay(current_tags())
        attributes = _results_attributes(kwargs)
        with _capturing_batches() as seen:
            result = original_results(*args, **kwargs)
        batch_id = _batch_id(args, kwargs)
        decoder = result
        if isinstance(result, APIResponse) and _raw_results(kwargs):
            decoder = result.parse()  # cached: the caller's parse() returns this very decoder
        if isinstance(decoder, JSONLDecoder):
            reader = _BatchReader(batch_id, seen.get(batch_id), tags, attribution, attributes)
            _watch_batch_results(decoder, reader, sink)
        else:  # with_streaming_response: reading the body here would change what the caller sees
            log.debug("usage of batch %s not recorded (response type %s)", batch_id, type(result))
        return result

    batches.retrieve = retrieve
    batches.results = results


# --- async client ------------------------------------------------------------------------
def _watch_async_stream(stream: AsyncStream[Any], call: _Call, sink: AsyncSink) -> None:
    call.request_id = _request_id(stream.response)
    inner = stream._iterator

    async def observed() -> AsyncIterator[Any]:
        try:
            async for item in inner:
                call.observe_event(item)
                yield item
        except GeneratorExit:
            await _emit_async(sink, call, Status.OK)
            raise
        except BaseException as exc:
            call.observe_error(exc)
            await _emit_async(sink, call, Status.ERROR)
            raise
        await _emit_async(sink, call, Status.OK)

    original_close = stream.close

    async def close() -> None:
        try:
            await original_close()
        finally:
            await _emit_async(sink, call, Status.OK)

    stream._iterator = observed()  # type: ignore[misc]
    stream.close = close  # type: ignore[method-assign]


async def _record_async_result(result: Any, call: _Call, sink: AsyncSink, raw: str | None) -> None:
    if isinstance(result, AsyncStream):
        _watch_async_stream(result, call, sink)
    elif isinstance(result, Message | BetaMessage):
        call.observe_message(result)
        await _emit_async(sink, call, Status.OK)
    elif isinstance(result, AsyncAPIResponse) and raw == "raw":
        call.request_id = _request_id(result.http_response)
        await _record_async_result(await result.parse(), call, sink, None)
    else:
        log.debug("usage of a %s call not recorded (response type %s)", call.model, type(result))


def _patch_async(
    client: anthropic.AsyncAnthropic,
    sink: AsyncSink,
    defaults: UsageTags,
    attribution: BatchAttribution,
    guard: BudgetGuard | None,
) -> None:
    _patch_async_resource(client.messages, sink, defaults, guard)
    _patch_async_resource(client.beta.messages, sink, defaults, guard)
    _accept_call_attributes(client.messages)
    _accept_call_attributes(client.beta.messages)
    _patch_async_batches(client.messages.batches, sink, defaults, attribution)
    _patch_async_batches(client.beta.messages.batches, sink, defaults, attribution)


def _patch_async_resource(
    messages: Any, sink: AsyncSink, defaults: UsageTags, guard: BudgetGuard | None
) -> None:
    original_post: Callable[..., Awaitable[Any]] = messages._post

    async def _post(path: str, *args: Any, **kwargs: Any) -> Any:
        attributes = _take_call_attributes(kwargs)  # whatever the path: never sent
        if path != _MESSAGES_PATH:
            return await original_post(path, *args, **kwargs)
        body = kwargs.get("body") or {}
        tags = defaults.overlay(current_tags())
        call = _Call(tags, body, bool(kwargs.get("stream")), attributes)
        _guarded(guard, call.tags)
        try:
            result = await original_post(path, *args, **kwargs)
        except BaseException as exc:
            call.observe_error(exc)
            await _emit_async(sink, call, Status.ERROR)
            raise
        await _record_async_result(result, call, sink, _raw_mode(kwargs))
        return result

    messages._post = _post


def _watch_async_batch_results(
    decoder: AsyncJSONLDecoder[Any], reader: _BatchReader, sink: AsyncSink
) -> None:
    inner = decoder._iterator

    async def observed() -> AsyncIterator[Any]:
        try:
            async for line in inner:
                if (call := _billed_call(reader, line)) is not None:
                    await _emit_async(sink, call, Status.OK)
                yield line
        finally:
            reader.summary()

    decoder._iterator = observed()  # type: ignore[misc]


def _patch_async_batches(
    batches: Any, sink: AsyncSink, defaults: UsageTags, attribution: BatchAttribution
) -> None:
    original_retrieve: Callable[..., Awaitable[Any]] = batches.retrieve
    original_results: Callable[..., Awaitable[Any]] = batches.results

    async def retrieve(*args: Any, **kwargs: Any) -> Any:
        batch = await original_retrieve(*args, **kwargs)
        _remember_batch(batch)
        return batch

    async def results(*args: Any, **kwargs: Any) -> Any:
        tags = defaults.overlay(current_tags())
        attributes = _results_attributes(kwargs)
        with _capturing_batches() as seen:
            result = await original_results(*args, **kwargs)
        batch_id = _batch_id(args, kwargs)
        decoder = result
        if isinstance(result, AsyncAPIResponse) and _raw_results(kwargs):
            decoder = await result.parse()
        if isinstance(decoder, AsyncJSONLDecoder):
            reader = _BatchReader(batch_id, seen.get(batch_id), tags, attribution, attributes)
            _watch_async_batch_results(decoder, reader, sink)
        else:
            log.debug("usage of batch %s not recorded (response type %s)", batch_id, type(result))
        return result

    batches.retrieve = retrieve
    batches.results = results


# --- public entry point --------------------------------------------------------------------
def _guard_of(budget_guard: bool | BudgetGuard, publisher: Any) -> BudgetGuard | None:
    if isinstance(budget_guard, BudgetGuard):
        return budget_guard
    if not budget_guard:
        return None
    settings = getattr(publisher, "settings", None)
    if settings is None:
        raise TypeError("budget_guard=True needs a publisher with settings; pass a BudgetGuard")
    return BudgetGuard(settings).start()


@overload
def instrument(
    client: anthropic.Anthropic,
    publisher: SyncSink,
    *,
    tenant_id: str | None = ...,
    source: Source | str | None = ...,
    source_id: str | None = ...,
    source_name: str | None = ...,
    metadata: Mapping[str, MetadataValue] | None = ...,
    attributes: Mapping[str, str] | None = ...,
    batch_attribution: BatchAttribution | None = ...,
    budget_guard: bool | BudgetGuard = ...,
) -> anthropic.Anthropic: ...
@overload
def instrument(
    client: anthropic.AsyncAnthropic,
    publisher: AsyncSink,
    *,
    tenant_id: str | None = ...,
    source: Source | str | None = ...,
    source_id: str | None = ...,
    source_name: str | None = ...,
    metadata: Mapping[str, MetadataValue] | None = ...,
    attributes: Mapping[str, str] | None = ...,
    batch_attribution: BatchAttribution | None = ...,
    budget_guard: bool | BudgetGuard = ...,
) -> anthropic.AsyncAnthropic: ...
def instrument(
    client: Any,
    publisher: Any,
    *,
    tenant_id: str | None = None,
    source: Source | str | None = None,
    source_id: str | None = None,
    source_name: str | None = None,
    metadata: Mapping[str, MetadataValue] | None = None,
    attributes: Mapping[str, str] | None = None,
    batch_attribution: BatchAttribution | None = None,
    budget_guard: bool | BudgetGuard = False,
) -> Any:
    """Publish one usage event per Messages API call of ``client``; returns ``client`` itself.

    A sync client needs a publisher whose ``publish()`` is synchronous
    (:class:`~producers.publisher.SyncUsagePublisher`); an async client takes either kind
    (:class:`~producers.publisher.UsagePublisher` or the sync one). Copies made with
    ``client.with_options()`` / ``client.copy()`` are instrumented too, with the same tags.

    ``batch_attribution(custom_id)`` gives the tags of one Message Batches result; they
    overlay the tags in force when ``results()`` was called. It replaces the default,
    :func:`tags_from_custom_id` (the :func:`batch_custom_id` convention); returning None
    leaves the result with the instrument()/usage_context() tags alone.

    ``budget_guard=True`` (or a :class:`~producers.budget_guard.BudgetGuard` to share)
    raises :class:`~producers.budget_guard.BudgetExceeded` *before* sending a call whose
    tenant, source or entity has used up a hard budget; it fails open when the budget
    status is stale (see :mod:`producers.budget_guard`). True needs a publisher with
    ``settings`` (both publishers have them): the guard reads their Kafka.

    ``attributes`` (``{"environment": "production"}``, say) go on every call of the client;
    :func:`usage_attributes` blocks and a call's ``llm_usage_attributes`` add to them and win
    over them (see the module's documentation). Checked strictly, unlike those of a block or
    a call: ``instrument()`` runs once at start-up, so a key or value the event contract
    would refuse (a value that is not a string included) raises ValueError at once.
    """
    if getattr(client, _MARK, False):
        raise ValueError("this client is already instrumented")
    checked = checked_attributes(attributes, "instrument")
    defaults = UsageTags(tenant_id, source, source_id, source_name, dict(metadata or {}), checked)
    attribution = batch_attribution or tags_from_custom_id
    guard = _guard_of(budget_guard, publisher)
    if isinstance(client, anthropic.AsyncAnthropic):
        _patch_async(client, publisher, defaults, attribution, guard)
    elif isinstance(client, anthropic.Anthropic):
        if inspect.iscoroutinefunction(getattr(publisher, "publish", None)):
            raise TypeError("a sync Anthropic client needs a SyncUsagePublisher (sync publish())")
        _patch_sync(client, publisher, defaults, attribution, guard)
    else:
        raise TypeError(f"expected anthropic.Anthropic or AsyncAnthropic, got {type(client)!r}")
    original_copy = client.copy

    def copy(*args: Any, **kwargs: Any) -> Any:
        return instrument(
            original_copy(*args, **kwargs),
            publisher,
            tenant_id=tenant_id,
            source=source,
            source_id=source_id,
            source_name=source_name,
            metadata=metadata,
            attributes=attributes,
            batch_attribution=batch_attribution,
            budget_guard=guard or False,
        )

    client.copy = copy
    client.with_options = copy
    setattr(client, _MARK, True)
    return client
