"""``/v1/usage/*``: thin handlers that validate parameters and shape responses.

Window math lives in :mod:`query_api.window`, SQL in :mod:`query_api.repository`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request

from query_api.attributes import FILTER_PARAMETER, AttributeParamError, parse_by, parse_filters
from query_api.auth import read_tenant
from query_api.pagination import CursorError, decode_cursor, encode_cursor, total_pages
from query_api.repository import Filters, UsageRepository
from query_api.schemas import (
    AttributeKey,
    Attributes,
    Breakdown,
    ByModel,
    BySource,
    ErrorBody,
    Point,
    RecordItem,
    Records,
    SourceUsage,
    Summary,
    Timeseries,
    Top,
    TopEntry,
    count_fields,
    money,
    window_fields,
)
from query_api.window import Window, local_buckets, parse_zone, resolve_window

Source = Literal["chat", "agent", "memory"]

router = APIRouter(
    prefix="/v1/usage",
    tags=["usage"],
    # Authenticate before anything else runs: without a valid key every /v1 request is a
    # 401, never a 422 that answers (and costs) on behalf of an unknown caller.
    dependencies=[Depends(read_tenant)],
    responses={
        401: {"model": ErrorBody, "description": "missing or invalid API key"},
        403: {"model": ErrorBody, "description": "the key lacks the read scope"},
        422: {"model": ErrorBody, "description": "invalid parameters"},
        503: {"model": ErrorBody, "description": "ClickHouse unavailable"},
    },
)


def get_window(
    request: Request,
    period: Annotated[
        Literal["24h", "7d", "30d"] | None,
        Query(description="rolling window ending now (default 24h)"),
    ] = None,
    start: Annotated[
        datetime | None,
        Query(alias="from", description="window start, ISO 8601 (UTC if no offset)"),
    ] = None,
    end: Annotated[
        datetime | None, Query(alias="to", description="window end (exclusive); default now")
    ] = None,
) -> Window:
    """The request's half-open UTC window (``period`` or ``from``/``to``)."""
    now_ms = int(request.app.state.clock() * 1000)
    max_days = request.app.state.settings.api_max_window_days
    return resolve_window(period, start, end, now_ms=now_ms, max_days=max_days)


def get_repository(request: Request) -> UsageRepository:
    repository: UsageRepository = request.app.state.repository
    return repository


def get_filters(
    request: Request,
    tenant: Annotated[str, Depends(read_tenant)],
    repo: Annotated[UsageRepository, Depends(get_repository)],
    source: Annotated[Source | None, Query(description="only this source")] = None,
    search: Annotated[
        str | None,
        Query(max_length=200, description="case-insensitive substring of the latest name"),
    ] = None,
    source_id: Annotated[
        str | None,
        Query(max_length=200, description="only this conversation or agent id"),
    ] = None,
) -> Filters:
    """The caller's tenant and filters; a name search is resolved to entities once here.

    ``attr.<key>=<value>`` filters are read from the raw query string: FastAPI cannot
    declare parameters whose names vary (each route documents them via ``ATTR_FILTER``).
    """
    try:
        attributes = parse_filters(request.query_params.multi_items())
    except AttributeParamError as exc:
        raise HTTPException(status_code=422, detail=str(exc)) from exc
    filters = Filters(
        tenant=tenant,
        source=source,
        search=search or None,
        source_id=source_id or None,
        attributes=attributes,
    )
    return repo.resolve_search(filters)


# The OpenAPI entry of the attr.<key> filter, for every route that takes FiltersDep.
ATTR_FILTER = {"parameters": [FILTER_PARAMETER]}
WindowDep = Annotated[Window, Depends(get_window)]
FiltersDep = Annotated[Filters, Depends(get_filters)]
RepoDep = Annotated[UsageRepository, Depends(get_repository)]


@router.get("/summary", response_model=Summary, openapi_extra=ATTR_FILTER)
def summary(window: WindowDep, filters: FiltersDep, repo: RepoDep) -> Summary:
    """The five cards: cost, tokens, calls and cost per call; unpriced models, if any."""
    return Summary.build(window, repo.summary(window, filters))


@router.get("/by-model", response_model=ByModel, openapi_extra=ATTR_FILTER)
def by_model(window: WindowDep, filters: FiltersDep, repo: RepoDep) -> ByModel:
    """Cost by model and price tier (batch, fast, priority, standard), most cost first."""
    return ByModel.build(window, repo.by_model(window, filters))


@router.get("/timeseries", response_model=Timeseries, openapi_extra=ATTR_FILTER)
def timeseries(
    window: WindowDep,
    filters: FiltersDep,
    repo: RepoDep,
    granularity: Annotated[Literal["hour", "day"], Query()] = "hour",
    tz: Annotated[str, Query(description="IANA time zone of the viewer")] = "UTC",
) -> Timeseries:
    """Cost over time: one zero-filled point per local hour or day of the viewer's zone."""
    zone = parse_zone(tz)
    buckets = local_buckets(window, zone, granularity)
    totals = repo.timeseries(window, buckets, filters)
    points = [
        Point(
            bucket_start=bucket.start.isoformat(),
            cost_usd=money(t.cost_usd),
            **count_fields(t),
        )
        for bucket, t in zip(buckets, totals, strict=True)
    ]
    return Timeseries(**window_fields(window), granularity=granularity, tz=tz, points=points)


@router.get("/by-source", response_model=BySource, openapi_extra=ATTR_FILTER)
def by_source(window: WindowDep, filters: FiltersDep, repo: RepoDep) -> BySource:
    """Cost split into chat, agent and memory (always all three, unless filtered)."""
    sources = [
        SourceUsage(
            source=name,
            cost_usd=money(t.cost_usd),
            unpriced_calls=t.unpriced_calls,
            **count_fields(t),
        )
        for name, t in repo.by_source(window, filters).items()
    ]
    return BySource(**window_fields(window), sources=sources)


@router.get("/top", response_model=Top, openapi_extra=ATTR_FILTER)
def top(
    window: WindowDep,
    filters: FiltersDep,
    repo: RepoDep,
    by: Annotated[Literal["cost", "tokens"], Query()] = "cost",
    limit: Annotated[int, Query(ge=1, le=100)] = 10,
) -> Top:
    """Top consumers: the conversations or agents with the most cost or tokens."""
    items = [TopEntry.build(item) for item in repo.top(window, filters, by, limit)]
    return Top(**window_fields(window), by=by, limit=limit, items=items)


@router.get("/breakdown", response_model=Breakdown, openapi_extra=ATTR_FILTER)
def breakdown(
    window: WindowDep,
    filters: FiltersDep,
    repo: RepoDep,
    by: Annotated[
        str,
        Query(
            max_length=69,
            description="source, model or attr.<key> (calls without the key: key null)",
        ),
    ] = "source",
    limit: Annotated[
        int, Query(ge=1, le=1000, description="groups listed; the rest in other")
    ] = 20,
) -> Breakdown:
    """Cost by source, model or the values of one attribute key, most cost first.

    ``limit`` groups are listed and the rest summed into ``other``. By ``attr.<key>``, the
    calls without that key are one more group, ``key: null``, listed (where its cost sorts
    it) whenever there are any: it never counts against ``limit`` nor goes into ``other``,
    so the unattributed amount is always visible. ``share`` is the group's cost / the
    window's cost, a float (breakdown.csv writes it as a plain decimal).
    """
    try:
        kind, key = parse_by(by)
    except AttributeParamError as exc:
        raise HTTPException(status_code=422, detail=str(exc)) from exc
    groups = repo.breakdown(window, filters, kind, key)
    return Breakdown.build(window, by, limit, groups)


@router.get("/attributes", response_model=Attributes, openapi_extra=ATTR_FILTER)
def attributes(
    window: WindowDep,
    filters: FiltersDep,
    repo: RepoDep,
    top: Annotated[int, Query(ge=1, le=100, description="top values listed per key")] = 5,
) -> Attributes:
    """The attribute keys of the window's calls: distinct values and top values by cost."""
    keys = [AttributeKey.build(usage) for usage in repo.attributes(window, filters, top)]
    return Attributes(**window_fields(window), keys=keys)


@router.get("/records", response_model=Records, openapi_extra=ATTR_FILTER)
def records(
    window: WindowDep,
    filters: FiltersDep,
    repo: RepoDep,
    page: Annotated[int, Query(ge=1, le=1_000_000)] = 1,
    page_size: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[
        str | None, Query(max_length=200, description="next_cursor of the previous page")
    ] = None,
) -> Records:
    """Every call, newest first; by page number, or by cursor for deep pages."""
    after = None
    if cursor:
        try:
            after = decode_cursor(cursor)
        except CursorError as exc:
            raise HTTPException(status_code=422, detail=str(exc)) from exc
    offset = 0 if after else (page - 1) * page_size
    rows, total = repo.records_page(
        window, filters, limit=page_size + 1, offset=offset, after=after
    )
    more, rows = len(rows) > page_size, rows[:page_size]
    last = rows[-1] if rows else None
    return Records(
        **window_fields(window),
        items=[RecordItem.build(r) for r in rows],
        page=None if after else page,
        page_size=page_size,
        total=total,
        total_pages=total_pages(total, page_size),
        next_cursor=encode_cursor(last.occurred_at_ms, last.event_id) if more and last else None,
    )
