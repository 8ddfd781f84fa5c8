"""records.csv and breakdown.csv against the real ClickHouse: every call of the filtered
window, row for row equal to brute force over ``usage_events``, summing to the summary."""

from __future__ import annotations

import csv
import io
import json
import random
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from fastapi.testclient import TestClient

from llm_usage.clickhouse import connect
from llm_usage.localstack.processes import free_port
from llm_usage.settings import Settings
from query_api.app import create_app
from query_api.repository import RECORDS_CSV_COLUMNS
from query_api.schemas import money
from tests.integration.test_api_oracle import COLUMNS, END, START, BruteForce, Query, generate, ms

pytestmark = pytest.mark.integration

AUTH = {"Authorization": "Bearer k1"}
NOW = datetime(2026, 4, 9, tzinfo=UTC)
TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
USERS = ["u-1", "u-2", "u-3", 'o\'Brien/"x" é']


@pytest.fixture
def api(migrated: Settings) -> Iterator[TestClient]:
    settings = migrated.model_copy(update={"api_keys": "k1:acme, k2:globex"})
    with TestClient(create_app(settings, clock=NOW.timestamp)) as client:
        yield client


def _attributes(rng: random.Random) -> dict[str, str]:
    """A third without attributes; the rest a user (one with quotes, a slash and an
    accent), some a customer too."""
    roll = rng.random()
    if roll < 0.33:
        return {}
    found = {"user": rng.choice(USERS)}
    if roll < 0.7:
        found["customer"] = rng.choice(["acme-corp", "initech"])
    return found


@pytest.fixture
def data(migrated: Settings) -> BruteForce:
    """800 calls of acme (renamed entities, unpriced and batch calls, attributes) and 200 of
    globex, inserted in blocks as the worker does."""
    client = connect(migrated)
    rng = random.Random(26)
    rows = generate("acme", 800, seed=26) + generate("globex", 200, seed=27, secret="G ")
    for i, row in enumerate(rows):
        row.extend([_attributes(rng), f"req_{i:05d}"])
    columns = [*COLUMNS, "attributes", "request_id"]
    for i in range(0, len(rows), 250):
        client.insert("usage_events", rows[i : i + 250], column_names=columns)
    client.insert(
        "source_names",
        [["acme", "chat", "conv-1", 'Renamed, with a "quote"', NOW + timedelta(days=1)]],
        column_names=["tenant_id", "source", "source_id", "source_name", "named_at"],
    )
    return BruteForce(client)


def _expected(
    oracle: BruteForce, q: Query, attrs: dict[str, str] | None = None
) -> list[dict[str, Any]]:
    """The window's calls newest first, straight from usage_events, as the CSV shows them."""
    where, params = oracle._where(q)
    result = oracle.client.query(
        "SELECT occurred_at, toString(event_id), toString(source), source_id, source_name,"
        " model, price_tier, input_tokens, output_tokens, cache_creation_input_tokens,"
        " cache_read_input_tokens, web_search_requests, cost_usd, tool_cost_usd, priced,"
        " toString(status), duration_ms, request_id, attributes"
        f" FROM usage_events WHERE {where} ORDER BY occurred_at DESC, event_id DESC",
        parameters=params,
    )
    names = oracle.latest_names(q.tenant)
    expected = []
    for r in result.result_rows:
        if attrs and any(r[18].get(k) != v for k, v in attrs.items()):
            continue
        at: datetime = r[0]
        expected.append({
            "occurred_at": at.strftime("%Y-%m-%dT%H:%M:%S.") + f"{at.microsecond // 1000:03d}Z",
            "event_id": r[1], "source": r[2], "source_id": r[3],
            "name": names.get((r[2], r[3]), r[4]), "model": r[5], "price_tier": r[6],
            "input_tokens": str(r[7]), "output_tokens": str(r[8]),
            "cache_write_tokens": str(r[9]), "cache_read_tokens": str(r[10]),
            "web_search_requests": str(r[11]), "cost_usd": money(r[12]),
            "tool_cost_usd": money(r[13]), "priced": "true" if r[14] else "false",
            "status": r[15], "duration_ms": str(r[16]), "request_id": r[17],
            "attributes": dict(r[18]),
        })  # fmt: skip
    return expected


def _parse(text: str) -> tuple[list[str], list[dict[str, Any]]]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    rows = []
    for row in reader:
        row["attributes"] = json.loads(row["attributes"])
        rows.append(row)
    return list(reader.fieldnames or []), rows


def _stamp(moment: datetime) -> str:
    return moment.strftime("%Y%m%dT%H%M%SZ")


def _windows() -> Iterator[tuple[datetime, datetime]]:
    """The whole data, then random windows with millisecond edges."""
    yield START, END
    rng = random.Random(7)
    for _ in range(3):
        a = START + timedelta(milliseconds=rng.randrange(30 * 86_400_000))
        yield a, a + timedelta(milliseconds=rng.randrange(86_400_000, 9 * 86_400_000))


CASES: list[tuple[dict[str, str], dict[str, str]]] = [
    ({}, {}),
    ({"source": "chat"}, {}),
    ({"search": "alpha"}, {}),
    ({"search": "renamed"}, {}),
    ({"attr.user": "u-2"}, {"user": "u-2"}),
    ({"attr.user": USERS[3], "source": "agent"}, {"user": USERS[3]}),
    ({"attr.customer": "initech", "attr.user": "u-1", "search": "a"}, {"customer": "initech",
                                                                          "user": "u-1"}),
]  # fmt: skip


@pytest.mark.sharded
def test_records_csv_is_every_call_of_the_filtered_window(
    api: TestClient, data: BruteForce
) -> None:
    checked = 0
    for start, end in _windows():
        for params, attrs in CASES:
            window = {"from": start.isoformat(), "to": end.isoformat()}
            response = api.get("/v1/usage/records.csv", params={**window, **params}, headers=AUTH)
            assert response.status_code == 200, response.text
            assert response.headers["content-type"] == "text/csv; charset=utf-8"
            assert response.headers["content-disposition"] == (
                f'attachment; filename="llm-usage-records-{_stamp(start)}-{_stamp(end)}.csv"'
            )
            assert response.text.startswith('"occurred_at","event_id",')
            header, rows = _parse(response.text)
            assert header == [name for name, _ in RECORDS_CSV_COLUMNS]
            q = Query("acme", ms(start), ms(end), params.get("source"), params.get("search"))
            assert rows == _expected(data, q, attrs), (window, params)
            assert all(TIME.match(row["occurred_at"]) for row in rows)
            summary = api.get("/v1/usage/summary", params={**window, **params}, headers=AUTH)
            body = summary.json()
            assert len(rows) == body["calls"]
            assert sum(Decimal(row["cost_usd"]) for row in rows) == Decimal(body["total_cost_usd"])
            checked += len(rows)
    assert checked > 1000  # the cases are not empty


def test_records_csv_details(api: TestClient, data: BruteForce) -> None:
    window = {"from": START.isoformat(), "to": END.isoformat()}
    text = api.get("/v1/usage/records.csv", params=window, headers=AUTH).text
    assert text.endswith("\r\n") and "\r\n\r\n" not in text
    _, rows = _parse(text)
    assert {row["source_id"] for row in rows if row["name"] == 'Renamed, with a "quote"'} == {
        "conv-1"
    }
    assert not any(row["name"].startswith("G ") for row in rows)  # nothing of globex
    odd = [row for row in rows if row["attributes"].get("user") == USERS[3]]
    assert odd and "\\/" not in text  # quotes escaped, the slash as it was sent
    assert all(re.fullmatch(r"\d+\.\d{12}", row["cost_usd"]) for row in rows)
    assert {row["priced"] for row in rows} == {"true", "false"}
    assert {"batch", "standard"} <= {row["price_tier"] for row in rows}
    # the other tenant's key sees only its own calls
    other = api.get("/v1/usage/records.csv", params=window, headers={"Authorization": "Bearer k2"})
    _, theirs = _parse(other.text)
    assert theirs and all(row["name"].startswith("G ") or not row["name"] for row in theirs)
    # an empty window is the header alone
    empty = {"from": "2020-01-01T00:00:00Z", "to": "2020-01-02T00:00:00Z"}
    alone = api.get("/v1/usage/records.csv", params=empty, headers=AUTH)
    assert alone.status_code == 200 and alone.text.count("\r\n") == 1


def test_breakdown_csv_is_the_breakdown(api: TestClient, data: BruteForce) -> None:
    window = {"from": START.isoformat(), "to": END.isoformat()}
    cases: list[dict[str, Any]] = [
        {"by": "attr.user", "limit": 2},
        {"by": "attr.user", "limit": 20},
        {"by": "source"},
        {"by": "model", "attr.customer": "initech"},
    ]
    for params in cases:
        json_body = api.get("/v1/usage/breakdown", params={**window, **params}, headers=AUTH)
        assert json_body.status_code == 200, json_body.text
        body = json_body.json()
        response = api.get("/v1/usage/breakdown.csv", params={**window, **params}, headers=AUTH)
        assert response.status_code == 200, response.text
        assert response.headers["content-disposition"] == (
            f'attachment; filename="llm-usage-breakdown-{params["by"]}-{_stamp(START)}'
            f'-{_stamp(END)}.csv"'
        )
        rows = list(csv.DictReader(io.StringIO(response.text, newline="")))
        listed = [r for r in rows if r["kind"] != "other"]
        assert [(r["key"] or None, int(r["calls"]), r["cost_usd"]) for r in listed] == [
            (g["key"], g["calls"], g["cost_usd"]) for g in body["groups"]
        ]
        assert [r["kind"] == "none" for r in listed] == [g["key"] is None for g in body["groups"]]
        other = [r for r in rows if r["kind"] == "other"]
        if body["other"] is None:
            assert other == []
        else:
            assert [(int(r["groups"]), r["cost_usd"]) for r in other] == [
                (body["other"]["groups"], body["other"]["cost_usd"])
            ]
        filters = {k: v for k, v in params.items() if k.startswith("attr.")}
        summary = api.get("/v1/usage/summary", params={**window, **filters}, headers=AUTH)
        assert sum(Decimal(r["cost_usd"]) for r in rows) == Decimal(
            summary.json()["total_cost_usd"]
        )
        assert sum(int(r["calls"]) for r in rows) == summary.json()["calls"]


@pytest.mark.parametrize(
    ("path", "params", "status", "message"),
    [
        ("records.csv", {"period": "1y"}, 422, "period"),
        ("records.csv", {"from": "2026-03-02T00:00:00Z", "to": "2026-03-01T00:00:00Z"}, 422,
         "before"),
        ("records.csv", {"from": "2020-01-01T00:00:00Z", "to": "2026-01-01T00:00:00Z"}, 422,
         "at most"),
        ("records.csv", {"source": "email"}, 422, "source"),
        ("records.csv", {"search": "x" * 500}, 422, "search"),
        ("records.csv", {"attr.User": "x"}, 422, "attribute key"),
        ("records.csv", {"attr.user": "x" * 300}, 422, "attr.user"),
        ("breakdown.csv", {"by": "nope"}, 422, "by"),
        ("breakdown.csv", {"by": "attr.User"}, 422, "attribute key"),
        ("breakdown.csv", {"limit": 0}, 422, "limit"),
        ("breakdown.csv", {"period": "90d"}, 422, "period"),
    ],
)  # fmt: skip
def test_bad_parameters_get_4xx_with_a_message(
    api: TestClient, path: str, params: dict[str, Any], status: int, message: str
) -> None:
    response = api.get(f"/v1/usage/{path}", params=params, headers=AUTH)
    assert response.status_code == status, response.text
    assert message in response.json()["detail"]


def test_exports_need_a_read_key(api: TestClient) -> None:
    for path in ("/v1/usage/records.csv", "/v1/usage/breakdown.csv"):
        assert api.get(path).status_code == 401
        assert api.get(path, headers={"Authorization": "Bearer nope"}).status_code == 401


def test_clickhouse_down_is_503(migrated: Settings) -> None:
    dead = migrated.model_copy(
        update={"clickhouse_url": f"http://127.0.0.1:{free_port()}", "api_keys": "k1:acme"}
    )
    with TestClient(create_app(dead)) as client:
        for path in ("/v1/usage/records.csv", "/v1/usage/breakdown.csv"):
            response = client.get(path, headers=AUTH)
            assert response.status_code == 503, response.text
            assert "unreachable" in response.json()["detail"]


def test_a_query_failing_before_its_first_chunk_is_a_503(
    api: TestClient, migrated: Settings
) -> None:
    """A real ClickHouse error at the start of the export (here: the raw table is gone)."""
    connect(migrated).command("RENAME TABLE usage_events TO usage_events_gone")
    response = api.get("/v1/usage/records.csv", headers=AUTH)
    assert response.status_code == 503 and "query failed" in response.json()["detail"]


def test_cells_a_spreadsheet_would_run_as_formulas_are_text(
    api: TestClient, data: BruteForce, migrated: Settings
) -> None:
    """OWASP's CSV-injection rule: a name or value starting with = + - @ gets a ``'``."""
    client = connect(migrated)
    row = generate("acme", 1, seed=99)[0]
    row.extend([{"user": "@SUM(1+1)"}, "-req"])
    client.insert("usage_events", [row], column_names=[*COLUMNS, "attributes", "request_id"])
    client.insert(
        "source_names",
        [["acme", "chat", "conv-1", '=HYPERLINK("http://x")', NOW + timedelta(days=2)]],
        column_names=["tenant_id", "source", "source_id", "source_name", "named_at"],
    )
    window = {"from": START.isoformat(), "to": END.isoformat()}
    _, rows = _parse(api.get("/v1/usage/records.csv", params=window, headers=AUTH).text)
    renamed = {row["name"] for row in rows if row["source_id"] == "conv-1"}
    assert renamed == {'\'=HYPERLINK("http://x")'}
    assert {row["request_id"] for row in rows if row["request_id"].endswith("-req")} == {"'-req"}
    params = {**window, "by": "attr.user", "limit": 1000}
    text = api.get("/v1/usage/breakdown.csv", params=params, headers=AUTH).text
    keys = [line[2] for line in csv.reader(io.StringIO(text))][1:]
    assert "'@SUM(1+1)" in keys and "@SUM(1+1)" not in keys
    assert not any(key.startswith(("=", "+", "-", "@")) for key in keys)
