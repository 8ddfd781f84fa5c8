"""``POST /v1/events``: contract events over HTTP, for services in any language.

The body is a JSON array of events, one JSON object, or NDJSON (one event per line). The
key decides the tenant: an event's ``tenant_id`` must match it or be absent. Good events
are accepted even when others in the same request are not; the answer says which indexes
were rejected and why (the contract's own reasons) and comes only after Kafka acknowledged
every accepted event.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, status
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from producers.contract import ContractError, UsageEvent, parse_call
from query_api.auth import require
from query_api.ingest.limits import TooLarge, read_body
from query_api.keys import Principal, Scope
from query_api.schemas import ErrorBody

NDJSON_TYPES = ("application/x-ndjson", "application/ndjson", "application/jsonl")


class Rejection(BaseModel):
    index: int = Field(description="position of the event in the request (0-based)")
    reason: str = Field(description="why it was rejected: the field and the rule it breaks")


class IngestResult(BaseModel):
    accepted: int = Field(description="events acknowledged by Kafka (duplicates included)")
    rejected: list[Rejection] = Field(description="events that were not accepted, and why")


class IngestRejected(IngestResult):
    detail: str


router = APIRouter(
    tags=["ingest"],
    responses={
        400: {"model": ErrorBody, "description": "the body is not JSON or NDJSON"},
        401: {"model": ErrorBody, "description": "missing or invalid API key"},
        403: {"model": ErrorBody, "description": "the key lacks the ingest scope"},
        413: {"model": ErrorBody, "description": "body or event count above the limit"},
        429: {"model": ErrorBody, "description": "the key's event rate is exceeded"},
        503: {"model": ErrorBody, "description": "Kafka unreachable: nothing was accepted"},
    },
)


class BadBody(ValueError):
    """The body cannot be split into events (answered 400)."""


def split_events(body: bytes, content_type: str) -> list[Any]:
    """The raw event objects of a JSON array, a single object, or NDJSON."""
    media = content_type.split(";")[0].strip().lower()
    try:
        if media in NDJSON_TYPES:
            return [json.loads(line) for line in body.splitlines() if line.strip()]
        payload = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise BadBody(
            f"body is not valid {'NDJSON' if media in NDJSON_TYPES else 'JSON'}: "
            f"{exc}; send a JSON array, one object, or NDJSON"
        ) from exc
    if isinstance(payload, list):
        return payload
    if isinstance(payload, dict):
        return [payload]
    raise BadBody(f"expected a JSON array or object, got {type(payload).__name__}")


def validate_for(tenant_id: str, raw: Any) -> UsageEvent:
    """One event of ``tenant_id``'s key; ContractError says why not."""
    if not isinstance(raw, dict):
        raise ContractError(f"event must be a JSON object, got {type(raw).__name__}")
    if raw.get("event_id") is None:
        # Without it a retried request (after a timeout or a lost answer) would be stored
        # again under new ids: over HTTP the client names each event, once.
        raise ContractError(
            "event_id: required over HTTP (a UUID, v7 recommended), so that a "
            "retry with the same ids is counted once"
        )
    claimed = raw.get("tenant_id")
    if claimed is None:
        raw = {**raw, "tenant_id": tenant_id}
    elif claimed != tenant_id:
        raise ContractError("tenant_id: does not match the API key's tenant (omit it)")
    return parse_call(raw)


@router.post(
    "/v1/events",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=IngestResult,
    responses={422: {"model": IngestRejected, "description": "every event was rejected"}},
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"type": "array", "items": {"type": "object"}}},
                "application/x-ndjson": {"schema": {"type": "string"}},
            },
        }
    },
)
async def post_events(
    request: Request, caller: Annotated[Principal, Depends(require(Scope.INGEST))]
) -> Any:
    """Accept contract events; 202 once Kafka acknowledged every accepted one."""
    state = request.app.state
    settings = state.settings
    body = await read_body(request, settings.ingest_max_body_bytes)
    try:
        items = split_events(body, request.headers.get("content-type", "application/json"))
    except BadBody as exc:
        return JSONResponse({"detail": str(exc)}, status.HTTP_400_BAD_REQUEST)
    if not items:
        return JSONResponse({"detail": "no events in the body"}, status.HTTP_400_BAD_REQUEST)
    if len(items) > settings.ingest_max_events:
        raise TooLarge(
            f"{len(items):,} events exceed the limit of {settings.ingest_max_events:,} per request"
        )
    state.limiter.check(caller.key_id if caller.key_id != "env" else caller.tenant_id, len(items))

    accepted: list[UsageEvent] = []
    rejected: list[Rejection] = []
    for index, raw in enumerate(items):
        try:
            accepted.append(validate_for(caller.tenant_id, raw))
        except ContractError as exc:
            rejected.append(Rejection(index=index, reason=exc.reason))
    await state.sink.send(accepted)  # KafkaUnavailable -> 503, nothing claimed as accepted
    for item in rejected:
        await state.sink.dead_letter(items[item.index], item.reason)
    state.ingest_metrics.count("events", len(accepted), len(rejected))
    result = IngestResult(accepted=len(accepted), rejected=rejected)
    if not accepted:
        detail = f"all {len(rejected)} events were rejected"
        body_out = IngestRejected(detail=detail, **result.model_dump())
        return JSONResponse(body_out.model_dump(), 422)
    return result
