"""The CSV exports' formatting, the stream's error detection and a download cut short
(pure: no ClickHouse; the end-to-end tests are tests/integration/test_api_exports.py)."""

from __future__ import annotations

import csv
import io
import re
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi.testclient import TestClient
from urllib3.exceptions import ProtocolError

from llm_usage.localstack.processes import free_port
from llm_usage.settings import Settings
from query_api import db
from query_api.app import create_app
from query_api.db import Unavailable
from query_api.exports import (
    BREAKDOWN_CSV_COLUMNS,
    attachment,
    breakdown_csv_text,
    breakdown_rows,
    export_filename,
    file_stamp,
)
from query_api.repository import Group, Totals
from query_api.schemas import Breakdown
from query_api.window import Window, to_ms


def test_file_names_carry_the_window_in_utc() -> None:
    paris = timezone(timedelta(hours=1))
    assert file_stamp(datetime(2026, 12, 7, 11, 11, 12, 345000, tzinfo=paris)) == "20261207T101112Z"
    start = datetime(2026, 12, 1, tzinfo=UTC)
    window = Window(to_ms(start), to_ms(start + timedelta(days=6, hours=10, milliseconds=5)))
    name = export_filename("records", window)
    assert name == "llm-usage-records-20261201T000000Z-20261207T100000Z.csv"
    assert attachment(name) == {"Content-Disposition": f'attachment; filename="{name}"'}


def _totals(calls: int, cost: str) -> Totals:
    return Totals(
        calls=calls,
        input_tokens=10 * calls,
        output_tokens=2 * calls,
        cache_creation_input_tokens=3 * calls,
        cache_read_input_tokens=4 * calls,
        cost_usd=Decimal(cost),
    )


def test_breakdown_rows_list_groups_the_null_group_and_other_exactly() -> None:
    window = Window(0, 86_400_000)
    groups = [
        Group("u-1", _totals(3, "0.300000000003")),
        Group(None, _totals(5, "0.2")),
        Group('o"Brien, Jr.', _totals(1, "0.1")),
        Group("u-2", _totals(2, "0.000000000001")),
    ]
    body = Breakdown.build(window, "attr.user", 2, groups)  # (the null group is not counted)
    rows = breakdown_rows(body)
    assert rows[0] == list(BREAKDOWN_CSV_COLUMNS)
    assert [r[:5] for r in rows[1:]] == [
        ["attr.user", "group", "u-1", "1", "3"],
        ["attr.user", "none", "", "1", "5"],
        ["attr.user", "group", 'o"Brien, Jr.', "1", "1"],
        ["attr.user", "other", "", "1", "2"],
    ]
    by_column = [dict(zip(rows[0], r, strict=True)) for r in rows[1:]]
    assert by_column[0]["cost_usd"] == "0.300000000003"  # exact, 12 places, as in the JSON
    assert by_column[3]["cost_usd"] == "0.000000000001"
    assert by_column[0]["cache_write_tokens"] == "9" and by_column[0]["cache_read_tokens"] == "12"
    assert sum(Decimal(r["cost_usd"]) for r in by_column) == Decimal("0.600000000004")
    assert float(by_column[0]["share"]) == body.groups[0].share

    text = breakdown_csv_text(body)
    assert text.endswith("\r\n") and text.count("\r\n") == 5
    assert list(csv.reader(io.StringIO(text))) == rows  # quotes and commas survive
    assert breakdown_rows(Breakdown.build(window, "model", 20, [])) == [list(BREAKDOWN_CSV_COLUMNS)]


def test_breakdown_csv_writes_the_null_group_past_limit_and_shares_as_plain_decimals() -> None:
    window = Window(0, 86_400_000)
    groups = [
        Group("big", _totals(3, "99999")),
        Group("tiny", _totals(1, "1")),
        Group(None, _totals(9, "0.5")),  # past limit 1 by cost: still its own row
    ]
    body = Breakdown.build(window, "attr.user", 1, groups)
    rows = [dict(zip(BREAKDOWN_CSV_COLUMNS, r, strict=True)) for r in breakdown_rows(body)[1:]]
    assert [(r["kind"], r["key"], r["groups"], r["calls"]) for r in rows] == [
        ("group", "big", "1", "3"),
        ("none", "", "1", "9"),
        ("other", "", "1", "1"),
    ]
    shares = [r["share"] for r in rows]
    listed = [*body.groups, body.other]
    assert "e-" in repr(listed[1].share) and "e-" in repr(listed[2].share)  # (were 5e-06 ...)
    assert all(re.fullmatch(r"0\.\d+", share) for share in shares), shares
    assert shares[1].startswith("0.00000499997")
    assert [float(share) for share in shares] == [g.share for g in listed if g]  # the JSON's
    assert (
        breakdown_rows(Breakdown.build(window, "model", 1, [Group("m", _totals(1, "0"))]))[1][-1]
        == "0.0"
    )


class FakeResponse:
    """What ``raw_stream`` returns: headers, ``stream(n)``, ``close``, ``release_conn``."""

    def __init__(self, chunks: list[bytes], tag: str | None = "abcdefghijklmnop") -> None:
        self.headers = {"X-ClickHouse-Exception-Tag": tag} if tag else {}
        self.chunks = chunks
        self.broken = False
        self.closed = False

    def stream(self, _: int) -> Iterator[bytes]:
        yield from self.chunks
        if self.broken:
            raise ProtocolError("Response ended prematurely")

    def close(self) -> None:
        self.closed = True

    def release_conn(self) -> None:
        pass


def _read(chunks: Iterator[bytes]) -> tuple[bytes, Exception | None]:
    got = b""
    try:
        for chunk in chunks:
            got += chunk
    except Unavailable as exc:
        return got, exc
    return got, None


def test_a_clean_stream_is_passed_through_whole() -> None:
    data = [b'"a","b"\r\n', b"1,2\r\n" * 1000, b"3,4\r\n"]
    response = FakeResponse(data)
    got, error = _read(db._checked_chunks(response, 1024))
    assert error is None and got == b"".join(data) and response.closed


@pytest.mark.parametrize("split", [0, 3, 17, 20, 29, 40])
def test_an_error_mid_stream_is_raised_and_none_of_it_is_yielded(split: int) -> None:
    """ClickHouse's in-body exception marker, wherever the chunks cut it."""
    rows = b"1,2\r\n" * 20
    error = b"\r\n__exception__\r\nabcdefghijklmnop\r\nCode: 241. DB::Exception: Memory limit"
    body = rows + error
    cut = len(rows) + split
    response = FakeResponse([body[:cut], body[cut:]])
    response.broken = True
    got, exc = _read(db._checked_chunks(response, 1024))
    assert isinstance(exc, Unavailable) and "Memory limit" in str(exc)
    assert b"__exception__" not in got and b"Code:" not in got
    assert rows.startswith(got) and response.closed


def test_a_broken_connection_without_a_tag_is_an_error_too() -> None:
    response = FakeResponse([b"1,2\r\n", b"3,"], tag=None)
    response.broken = True
    got, exc = _read(db._checked_chunks(response, 1024))
    assert isinstance(exc, Unavailable) and "broke" in str(exc)
    assert got == b"1,2\r\n3,"


class StubRepository:
    """Stands in for UsageRepository: records_csv yields ``chunks`` then fails."""

    def __init__(self, chunks: list[bytes], fail_at_start: bool = False) -> None:
        self.chunks = chunks
        self.fail_at_start = fail_at_start
        self.closed = False

    def resolve_search(self, filters: Any) -> Any:
        return filters

    def records_csv(self, window: Window, filters: Any, *, max_seconds: int) -> Iterator[bytes]:
        if self.fail_at_start:
            raise Unavailable("ClickHouse query failed: Memory limit exceeded")
        return self._chunks()

    def _chunks(self) -> Iterator[bytes]:
        try:
            yield from self.chunks
            raise Unavailable("ClickHouse stream broke: connection reset")
        finally:
            self.closed = True

    def close(self) -> None:
        pass


def _app(repository: StubRepository) -> TestClient:
    app = create_app(Settings(api_keys="k1:acme"))  # type: ignore[call-arg]
    app.state.repository = repository
    return TestClient(app, raise_server_exceptions=False)


def test_a_failure_before_the_first_chunk_is_a_503() -> None:
    with _app(StubRepository([], fail_at_start=True)) as client:
        response = client.get("/v1/usage/records.csv", headers={"Authorization": "Bearer k1"})
    assert response.status_code == 503 and "Memory limit" in response.json()["detail"]
    assert response.headers["retry-after"] == "5"


def test_a_failure_mid_download_cuts_the_response_short() -> None:
    """The 200 and the first rows are out when ClickHouse fails: over real HTTP (uvicorn)
    the body is cut, not completed, so the client sees an incomplete transfer; nothing of
    the error is in it, and ClickHouse's response is closed."""
    repository = StubRepository([b'"occurred_at"\r\n', b'"2026-12-07T10:11:12.345Z"\r\n'])
    app = create_app(Settings(api_keys="k1:acme"))  # type: ignore[call-arg]
    app.state.repository = repository
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="critical", lifespan="off")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        got = b""
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as http:
            with (
                pytest.raises(httpx.RemoteProtocolError),
                http.stream(
                    "GET", "/v1/usage/records.csv", headers={"Authorization": "Bearer k1"}
                ) as response,
            ):
                assert response.status_code == 200
                for chunk in response.iter_bytes():
                    got += chunk
            metrics = http.get("/metrics").text
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    assert got == b"".join(repository.chunks) and repository.closed
    assert "llm_usage_api_clickhouse_unavailable_total 1.0" in metrics


class EndlessRepository(StubRepository):
    """records_csv yields chunks until closed."""

    def _chunks(self) -> Iterator[bytes]:
        try:
            while True:
                yield b"x" * 65536
                time.sleep(0.001)
        finally:
            self.closed = True


def test_a_client_that_goes_away_closes_the_clickhouse_response() -> None:
    repository = EndlessRepository([])
    app = create_app(Settings(api_keys="k1:acme"))  # type: ignore[call-arg]
    app.state.repository = repository
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="critical", lifespan="off")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        with (
            httpx.Client(base_url=f"http://127.0.0.1:{port}") as http,
            http.stream(
                "GET", "/v1/usage/records.csv", headers={"Authorization": "Bearer k1"}
            ) as response,
        ):
            assert response.status_code == 200
            next(response.iter_raw(65536))
        deadline = time.monotonic() + 10
        while not repository.closed and time.monotonic() < deadline:
            time.sleep(0.05)
        assert repository.closed
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_cells_that_would_start_a_formula_get_an_apostrophe() -> None:
    from query_api.exports import neutralised

    for text in ["=1+1", "+1", "-2", "@SUM(A1)", "\tx", "\rx"]:
        assert neutralised(text) == "'" + text
    for text in ["", "a=1", "'=1", " =1", "1-2"]:
        assert neutralised(text) == text
