"""``/v1/usage/*.csv``: the records and a breakdown as CSV files (read scope, the key's tenant).

- ``GET /v1/usage/records.csv``: every call of the window (the same window and filters as
  ``/v1/usage/records``, ``attr.<key>=<value>`` included), newest first; not a page. It is
  streamed from ClickHouse chunk by chunk (:meth:`UsageRepository.records_csv`): the API
  holds one chunk at a time, so its memory stays flat whatever the size.
- ``GET /v1/usage/breakdown.csv``: the groups of ``/v1/usage/breakdown`` (same parameters),
  then the null group and ``other`` as the JSON has them; rendered here from that response.

Both have a header row and ``Content-Disposition: attachment`` with a file name that carries
the window; money is the exact decimal of the JSON API (12 places), times are UTC ISO 8601.

Errors: bad parameters are 422 and a ClickHouse that cannot answer is 503, as on every
endpoint; records.csv reads its first chunk before answering, so a query that fails early
is a 503 too. Should ClickHouse fail *after* the download has begun (the 200 and part of
the file are sent by then), the API stops and closes the connection without ending the
chunked body: the client sees an incomplete transfer (curl: "transfer closed with
outstanding read data", httpx: ``RemoteProtocolError``), never a complete-looking, short
file, and nothing of ClickHouse's error message is written into the file. The API logs the
error and counts it in ``llm_usage_api_clickhouse_unavailable_total``.
"""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response, StreamingResponse
from starlette.concurrency import iterate_in_threadpool

from query_api.auth import read_tenant
from query_api.db import Unavailable
from query_api.metrics import ApiMetrics
from query_api.repository import FORMULA_STARTS, RECORDS_CSV_COLUMNS
from query_api.schemas import Breakdown, BreakdownGroup, ErrorBody
from query_api.usage import ATTR_FILTER, FiltersDep, RepoDep, WindowDep
from query_api.usage import breakdown as breakdown_body
from query_api.window import Window

CSV_MEDIA_TYPE = "text/csv; charset=utf-8"
BREAKDOWN_CSV_COLUMNS = (
    "by",
    "kind",
    "key",
    "groups",
    "calls",
    "input_tokens",
    "output_tokens",
    "cache_write_tokens",
    "cache_read_tokens",
    "cost_usd",
    "share",
)


def _csv_response(example: str) -> dict[int | str, dict[str, object]]:
    return {
        200: {
            "content": {CSV_MEDIA_TYPE: {"schema": {"type": "string"}, "example": example}},
            "description": "a CSV file with a header row (RFC 4180, UTF-8, CRLF line ends)",
        }
    }


router = APIRouter(
    prefix="/v1/usage",
    tags=["exports"],
    dependencies=[Depends(read_tenant)],  # 401 / 403 before anything else, as in usage.py
    responses={
        401: {"model": ErrorBody, "description": "missing or invalid API key"},
        403: {"model": ErrorBody, "description": "the key lacks the read scope"},
        422: {"model": ErrorBody, "description": "invalid parameters"},
        503: {"model": ErrorBody, "description": "ClickHouse unavailable"},
    },
)


def file_stamp(moment: datetime) -> str:
    """``2026-12-07T10:11:12.345+00:00`` -> ``20261207T101112Z`` (UTC, for file names)."""
    return moment.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")


def export_filename(what: str, window: Window) -> str:
    """``llm-usage-<what>-<from>-<to>.csv`` for the window (UTC, to the second)."""
    return f"llm-usage-{what}-{file_stamp(window.start)}-{file_stamp(window.end)}.csv"


def attachment(filename: str) -> dict[str, str]:
    """The headers that make a browser save the body as ``filename``."""
    return {"Content-Disposition": f'attachment; filename="{filename}"'}


@router.get(
    "/records.csv",
    response_class=StreamingResponse,
    responses=_csv_response(
        ",".join(f'"{name}"' for name, _ in RECORDS_CSV_COLUMNS)
        + '\r\n"2026-12-07T10:11:12.345Z","0193a1b2-...","chat","conv-1","Trip plans",'
        '"claude-sonnet-4-5","standard",1200,300,0,0,0,0.008100000000,0.000000000000,'
        'true,"ok",1834,"req_011","{""user"":""u-42""}"\r\n'
    ),
    openapi_extra=ATTR_FILTER,
)
def records_csv(
    request: Request, window: WindowDep, filters: FiltersDep, repo: RepoDep
) -> StreamingResponse:
    """Every call of the window as CSV, newest first, streamed (the file is not one page).

    Columns: occurred_at (UTC, ms), event_id, source, source_id, name (latest title or
    agent name), model, price_tier, input/output/cache_write/cache_read tokens,
    web_search_requests, cost_usd and tool_cost_usd (exact, 12 places), priced, status,
    duration_ms, request_id, attributes (a JSON object, keys sorted).
    """
    timeout = request.app.state.settings.api_export_timeout_s
    chunks = repo.records_csv(window, filters, max_seconds=timeout)  # 503 if it fails now
    return StreamingResponse(
        _body(chunks, request.app.state.metrics),
        media_type=CSV_MEDIA_TYPE,
        headers={**attachment(export_filename("records", window)), "Cache-Control": "no-store"},
    )


class ExportInterrupted(RuntimeError):
    """ClickHouse failed after a download began: the response is cut short (see above)."""


async def _body(chunks: Iterator[bytes], metrics: ApiMetrics) -> AsyncIterator[bytes]:
    """``chunks``, each read in a worker thread (ClickHouse reads block); the ClickHouse
    response is closed however the download ends (done, failed or the client gone)."""
    sent = 0
    try:
        async for chunk in iterate_in_threadpool(chunks):
            sent += len(chunk)
            yield chunk
    except Unavailable as exc:
        # Too late for a 503: raising makes the server drop the connection mid-body.
        metrics.unavailable.inc()
        raise ExportInterrupted(f"CSV export cut short after {sent:,} bytes: {exc}") from exc
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()


@router.get(
    "/breakdown.csv",
    response_class=Response,
    responses=_csv_response(
        ",".join(BREAKDOWN_CSV_COLUMNS)
        + "\r\nattr.user,group,u-42,1,310,412000,9100,0,0,12.345600000000,0.61"
        + "\r\nattr.user,none,,1,95,51000,1200,0,0,4.000000000000,0.2"
        + "\r\nattr.user,other,,12,40,30000,800,0,0,3.890000000000,0.19\r\n"
    ),
    openapi_extra=ATTR_FILTER,
)
def breakdown_csv(
    window: WindowDep, body: Annotated[Breakdown, Depends(breakdown_body)]
) -> Response:
    """``/v1/usage/breakdown`` (same parameters: by, limit, window, filters) as CSV.

    One row per listed group (kind ``group``; the calls without the attribute are kind
    ``none`` with an empty key, listed whenever there are any: never counted against
    ``limit`` nor summed into ``other``), then the groups past ``limit`` summed (kind
    ``other``, ``groups`` = how many). ``share`` is the JSON's number as a plain decimal
    (``0.00001``, never ``1e-05``). Small (at most ``limit`` + 2 rows): rendered in one
    piece.
    """
    return Response(
        breakdown_csv_text(body),
        media_type=CSV_MEDIA_TYPE,
        headers={
            **attachment(export_filename(f"breakdown-{body.by}", window)),
            "Cache-Control": "no-store",
        },
    )


def neutralised(text: str) -> str:
    """``text`` as a spreadsheet shows it as text: a leading ``'`` before a formula start."""
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def plain(share: float) -> str:
    """``share`` as the JSON has it (the shortest text that reads back as the same float),
    written as a plain decimal: ``1e-05`` -> ``0.00001``, never in exponent notation."""
    return format(Decimal(repr(share)), "f")


def breakdown_rows(body: Breakdown) -> list[list[str]]:
    """The CSV rows (header first) of a breakdown response, as strings."""
    rows = [list(BREAKDOWN_CSV_COLUMNS)]

    def row(kind: str, group: BreakdownGroup, groups: str) -> list[str]:
        return [
            body.by,
            kind,
            neutralised(group.key or ""),
            groups,
            str(group.calls),
            str(group.input_tokens),
            str(group.output_tokens),
            str(group.cache_write_tokens),
            str(group.cache_read_tokens),
            group.cost_usd,
            plain(group.share),
        ]

    for group in body.groups:
        rows.append(row("group" if group.key is not None else "none", group, "1"))
    if body.other is not None:
        rows.append(row("other", body.other, str(body.other.groups)))
    return rows


def breakdown_csv_text(body: Breakdown) -> str:
    """:func:`breakdown_rows` as RFC 4180 CSV (CRLF line ends, quoted only where needed)."""
    out = io.StringIO()
    csv.writer(out, lineterminator="\r\n").writerows(breakdown_rows(body))
    return out.getvalue()
