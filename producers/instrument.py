"""Anthropic client instrumentation: every Messages API call becomes one usage event.

:func:`instrument` patches one ``anthropic.Anthropic`` / ``AsyncAnthropic`` *instance* in
place (its type, methods and return values stay exactly the SDK's) by wrapping the
``_post`` of its ``messages`` resource, the single path through which ``create``,
``create(stream=True)``, ``stream()``, ``parse()`` and ``with_raw_response`` reach
``POST /v1/messages`` (``client.beta.messages`` is wrapped the same way). Non-streaming
calls are recorded from ``Message.usage``; streams from the ``message_start`` /
``message_delta`` events as the caller consumes them, so the final usage (cache tokens
included) is the one the API reported. A failed call publishes ``status=error`` with
whatever tokens the API had reported before failing.

Attribution (tenant, source, conversation/agent id and name) comes from ``instrument()``
defaults overlaid with :func:`usage_context`, a context variable, so one shared client
serves many conversations and concurrent asyncio tasks keep their own tags. Publishing
never raises into the caller: a usage event that cannot be built or queued is logged.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar, overload

import anthropic
from anthropic import APIStatusError, AsyncStream, Stream
from anthropic._constants import RAW_RESPONSE_HEADER
from anthropic._response import APIResponse, AsyncAPIResponse
from anthropic.types import Message
from anthropic.types.beta import BetaMessage
from pydantic import ValidationError

from producers.contract import Source, Status, UsageEvent, describe_validation_error

log = logging.getLogger(__name__)

MetadataValue = str | int | float | bool | None
UNATTRIBUTED = "unattributed"
_MESSAGES_PATH = "/v1/messages"
_MARK = "_llm_usage_instrumented"
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

    def overlay(self, other: UsageTags) -> UsageTags:
        """``other``'s set fields win; metadata is merged."""
        changes: dict[str, Any] = {
            k: getattr(other, k)
            for k in ("tenant_id", "source", "source_id", "source_name")
            if getattr(other, k) is not None
        }
        if other.metadata:
            changes["metadata"] = {**self.metadata, **other.metadata}
        return replace(self, **changes)


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
) -> Iterator[UsageTags]:
    """Tag every instrumented call made inside the block (thread- and task-local)."""
    tags = UsageTags(tenant_id, source, source_id, source_name, dict(metadata or {}))
    token = _context.set(current_tags().overlay(tags))
    try:
        yield current_tags()
    finally:
        _context.reset(token)


# --- recording one call ----------------------------------------------------------------
class _Call:
    """What we learn about one API call while it runs; turns into one UsageEvent."""

    def __init__(self, tags: UsageTags, body: Mapping[str, Any], stream: bool) -> None:
        self.tags = tags
        self.model = str(body.get("model") or "unknown")
        self.stream = stream
        self.occurred_at = datetime.now(UTC)
        self.started = time.monotonic()
        self.usage: dict[str, int] = {}
        self.request_id: str | None = None
        self.extra: dict[str, MetadataValue] = {"stream": stream}
        self.finished = False
        self.complete = not stream

    def observe_usage(self, usage: Any) -> None:
        """Record a ``Usage`` / ``MessageDeltaUsage``; later reports are cumulative totals."""
        for name in ("input_tokens", "output_tokens"):
            value = getattr(usage, name, None)
            if isinstance(value, int):
                self.usage[name] = value
        for name in ("cache_creation_input_tokens", "cache_read_input_tokens"):
            value = getattr(usage, name, None)
            if isinstance(value, int):
                self.usage[name] = value
        split = getattr(usage, "cache_creation", None)
        five = getattr(split, "ephemeral_5m_input_tokens", None)
        hour = getattr(split, "ephemeral_1h_input_tokens", None)
        if isinstance(five, int) and isinstance(hour, int):
            self.usage["cache_creation_5m_input_tokens"] = five
            self.usage["cache_creation_1h_input_tokens"] = hour
        tier = getattr(usage, "service_tier", None)
        if isinstance(tier, str):
            self.extra["service_tier"] = tier

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
        usage = dict(self.usage)
        five = usage.get("cache_creation_5m_input_tokens")
        hour = usage.get("cache_creation_1h_input_tokens")
        total = usage.get("cache_creation_input_tokens")
        if five is not None and hour is not None and total is not None and total != five + hour:
            usage.pop("cache_creation_5m_input_tokens")  # inconsistent split: keep the total
            usage.pop("cache_creation_1h_input_tokens")
        if self.stream and not self.complete:
            self.extra["incomplete"] = True
        try:
            return UsageEvent.model_validate(
                {
                    "tenant_id": tags.tenant_id,
                    "occurred_at": self.occurred_at,
                    "source": tags.source,
                    "source_id": tags.source_id or UNATTRIBUTED,
                    "source_name": tags.source_name,
                    "model": self.model,
                    **usage,
                    "duration_ms": max(0, round((time.monotonic() - self.started) * 1000)),
                    "status": status,
                    "request_id": self.request_id,
                    "metadata": {**tags.metadata, **self.extra},
                }
            )
        except ValidationError as exc:
            reason = describe_validation_error(exc)
            log.error("usage event for a %s call is invalid, not published: %s", self.model, reason)
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


def _patch_sync(client: anthropic.Anthropic, sink: SyncSink, defaults: UsageTags) -> None:
    _patch_sync_resource(client.messages, sink, defaults)
    _patch_sync_resource(client.beta.messages, sink, defaults)


def _patch_sync_resource(messages: Any, sink: SyncSink, defaults: UsageTags) -> None:
    original_post: Callable[..., Any] = messages._post

    def _post(path: str, *args: Any, **kwargs: Any) -> Any:
        if path != _MESSAGES_PATH:
            return original_post(path, *args, **kwargs)
        body = kwargs.get("body") or {}
        call = _Call(defaults.overlay(current_tags()), body, bool(kwargs.get("stream")))
        try:
            result = original_post(path, *args, **kwargs)
        except BaseException as exc:
            call.observe_error(exc)
            _emit_sync(sink, call, Status.ERROR)
            raise
        _record_result(result, call, sink, _raw_mode(kwargs))
        return result

    messages._post = _post


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


def _patch_async(client: anthropic.AsyncAnthropic, sink: AsyncSink, defaults: UsageTags) -> None:
    _patch_async_resource(client.messages, sink, defaults)
    _patch_async_resource(client.beta.messages, sink, defaults)


def _patch_async_resource(messages: Any, sink: AsyncSink, defaults: UsageTags) -> None:
    original_post: Callable[..., Awaitable[Any]] = messages._post

    async def _post(path: str, *args: Any, **kwargs: Any) -> Any:
        if path != _MESSAGES_PATH:
            return await original_post(path, *args, **kwargs)
        body = kwargs.get("body") or {}
        call = _Call(defaults.overlay(current_tags()), body, bool(kwargs.get("stream")))
        try:
            result = await original_post(path, *args, **kwargs)
        except BaseException as exc:
            call.observe_error(exc)
            await _emit_async(sink, call, Status.ERROR)
            raise
        await _record_async_result(result, call, sink, _raw_mode(kwargs))
        return result

    messages._post = _post


# --- public entry point --------------------------------------------------------------------
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
) -> Any:
    """Publish one usage event per Messages API call of ``client``; returns ``client`` itself.

    A sync client needs a publisher whose ``publish()`` is synchronous
    (:class:`~producers.publisher.SyncUsagePublisher`); an async client takes either kind
    (:class:`~producers.publisher.UsagePublisher` or the sync one). Copies made with
    ``client.with_options()`` / ``client.copy()`` are instrumented too, with the same tags.
    """
    if getattr(client, _MARK, False):
        raise ValueError("this client is already instrumented")
    defaults = UsageTags(tenant_id, source, source_id, source_name, dict(metadata or {}))
    if isinstance(client, anthropic.AsyncAnthropic):
        _patch_async(client, publisher, defaults)
    elif isinstance(client, anthropic.Anthropic):
        if inspect.iscoroutinefunction(getattr(publisher, "publish", None)):
            raise TypeError("a sync Anthropic client needs a SyncUsagePublisher (sync publish())")
        _patch_sync(client, publisher, defaults)
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
        )

    client.copy = copy
    client.with_options = copy
    setattr(client, _MARK, True)
    return client
