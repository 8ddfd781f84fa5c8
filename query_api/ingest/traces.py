"""``POST /v1/traces``: OTLP/HTTP trace exports (protobuf or JSON) whose GenAI model-call
spans become usage events; the mapping is in :mod:`query_api.ingest.genai`.

The answer follows OTLP/HTTP: 200 with an ``ExportTraceServiceResponse`` in the request's
encoding, whose ``partial_success`` counts the GenAI spans that could not become events and
says why. Spans that are not model calls (HTTP, database, ``invoke_agent`` ...) are ignored,
counted in ``llm_usage_ingest_spans_ignored_total`` and in the ``X-Spans-Ignored`` header.
503 (with ``Retry-After``, which OTLP exporters honour) while Kafka is unreachable.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response, status
from fastapi.responses import JSONResponse

from producers.contract import ContractError, UsageEvent, parse_call
from query_api.auth import require
from query_api.ingest.genai import OtlpDecodeError, decode_request, encode_response, spans_to_events
from query_api.ingest.limits import TooLarge, read_body
from query_api.keys import Principal, Scope
from query_api.schemas import ErrorBody

router = APIRouter(
    tags=["ingest"],
    responses={
        400: {"model": ErrorBody, "description": "the body is not an OTLP trace export"},
        401: {"model": ErrorBody, "description": "missing or invalid API key"},
        403: {"model": ErrorBody, "description": "the key lacks the ingest scope"},
        413: {"model": ErrorBody, "description": "body or span count above the limit"},
        415: {"model": ErrorBody, "description": "neither protobuf nor JSON"},
        429: {"model": ErrorBody, "description": "the key's event rate is exceeded"},
        503: {"model": ErrorBody, "description": "Kafka unreachable: nothing was accepted"},
    },
)

_MAX_REASONS = 5  # partial_success.error_message names the first few problems


@router.post(
    "/v1/traces",
    response_class=Response,
    responses={200: {"content": {"application/x-protobuf": {}, "application/json": {}}}},
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/x-protobuf": {"schema": {"type": "string", "format": "binary"}},
                "application/json": {"schema": {"type": "object"}},
            },
        }
    },
)
async def post_traces(
    request: Request, caller: Annotated[Principal, Depends(require(Scope.INGEST))]
) -> Response:
    """Export spans (OTLP/HTTP); GenAI model calls become usage events of the key's tenant."""
    state = request.app.state
    settings = state.settings
    content_type = request.headers.get("content-type", "application/x-protobuf")
    body = await read_body(request, settings.ingest_max_body_bytes)
    try:
        export = decode_request(body, content_type)
    except OtlpDecodeError as exc:
        code = 415 if "content type" in str(exc).lower() else status.HTTP_400_BAD_REQUEST
        return JSONResponse({"detail": str(exc)}, code)
    mapped = spans_to_events(export, caller.tenant_id, state.span_mapping)
    spans = len(mapped.events) + len(mapped.rejected) + mapped.ignored
    if spans > settings.ingest_max_events:
        raise TooLarge(f"{spans:,} spans exceed the limit of {settings.ingest_max_events:,}")
    state.limiter.check(
        caller.key_id if caller.key_id != "env" else caller.tenant_id, len(mapped.events)
    )

    rejected = list(mapped.rejected)
    events: list[UsageEvent] = []
    for raw, span in zip(mapped.events, mapped.span_index, strict=True):
        try:
            events.append(parse_call(raw))
        except ContractError as exc:
            rejected.append((span, exc.reason))
    await state.sink.send(events)  # KafkaUnavailable -> 503
    state.ingest_metrics.count("traces", len(events), len(rejected), ignored=mapped.ignored)
    rejected.sort()
    message = "; ".join(f"span {i}: {reason}" for i, reason in rejected[:_MAX_REASONS])
    if len(rejected) > _MAX_REASONS:
        message += f"; and {len(rejected) - _MAX_REASONS} more"
    media = "application/json" if "json" in content_type.lower() else "application/x-protobuf"
    return Response(
        encode_response(len(rejected), message, media),
        media_type=media,
        headers={"X-Spans-Ignored": str(mapped.ignored)},
    )
