"""Tenant isolation and injection: what tests/integration/test_api_exactness.py does not cover.

Already covered there (not repeated here):
- ``test_tenant_isolation``: tenant A pages through all its records, searches for B's names,
  reads top and summary: never a row, name or total of B; B's key sees only B's calls.
- ``test_sql_injection_search_is_just_a_string``: quotes and SQL in ``search`` match names
  literally on records, summary and top, and harm nothing.
And in tests/integration/test_api_endpoints.py, ``test_auth_is_required_and_decides_the_tenant``.

Added here:
- every aggregate endpoint (summary, timeseries, by-source, by-model, top) of each tenant equals
  brute force over that tenant's raw rows, and the two tenants add up to the whole table;
- the tenant cannot be chosen by a parameter or a header, only by the key;
- a cursor forged from another tenant's row reveals nothing of that tenant;
- hostile strings in *events* (names, ids, metadata) go through the processor's own
  validate -> enrich -> insert path and come back verbatim: stored as data, never run;
- SQL, quotes, NUL bytes and path tricks in *every* query parameter get 200 or 422 with a
  message, never a 5xx, and the tables are intact afterwards.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from fastapi.testclient import TestClient

from llm_usage.clickhouse import apply_migrations, connect
from llm_usage.settings import Settings
from query_api.app import create_app
from query_api.pagination import encode_cursor
from stream_processor.enrich import Enricher
from stream_processor.pricing import PriceBook
from stream_processor.sink import ClickHouseWriter, dedup_token
from stream_processor.validate import validate_message
from tests.conftest import unique
from tests.integration.test_api_oracle import END, START, generate, insert, iso_ms, ms

pytestmark = pytest.mark.integration

KEYS = {"iso-key-a": "tenant-a", "iso-key-b": "tenant-b"}
A = {"Authorization": "Bearer iso-key-a"}
B = {"Authorization": "Bearer iso-key-b"}
EVERYTHING = {"from": iso_ms(ms(START) - 1), "to": iso_ms(ms(END) + 1)}

HOSTILE = [
    "'; DROP TABLE usage_events; --",
    "Robert'); DELETE FROM usage_events WHERE ('1'='1",
    "\\' OR tenant_id != '",
    "{tenant:String} UNION ALL SELECT * FROM system.users",
    '"; SELECT * FROM system.tables; --',
    "%_% LIKE '%'",
    "zero\u200bwidth \U0001f600 ünïcødé",
    "back`tick` $(rm -rf /) <script>alert(1)</script>",
]
PAYLOADS = [
    "'", "''", "' OR '1'='1", "1; DROP TABLE usage_events", "\\", "\x00", "%00", "../../etc/passwd",
    "{tenant:String}", "tenant-b", "1e309", "-1", "99999999999999999999999", "NaN", "24h' --",
    "2026-03-01T00:00:00Z'); DROP TABLE usage_events; --", "\u202e", "😀" * 10, "x" * 300,
]  # fmt: skip
PARAMETERS = ["period", "from", "to", "source", "search", "tz", "granularity", "by", "limit",
              "page", "page_size", "cursor"]  # fmt: skip
ENDPOINTS = ["summary", "timeseries", "by-source", "by-model", "top", "records"]


@dataclass
class Env:
    http: TestClient
    settings: Settings
    hostile: dict[str, tuple[str, str]]  # source_name -> (event_id, source_id) carrying it


def _hostile_events() -> list[dict[str, Any]]:
    at = START + timedelta(days=3)
    return [
        {
            "tenant_id": "tenant-a",
            "occurred_at": (at + timedelta(minutes=i)).isoformat(),
            "source": "chat",
            "source_id": f"hostile-{i}:{name[:40]}",
            "source_name": name,
            "model": "claude-haiku-4-5",
            "input_tokens": 10 + i,
            "output_tokens": 1,
            "request_id": name[:200],
            "metadata": {"note": name, name[:30]: i},
        }
        for i, name in enumerate(HOSTILE)
    ]


@pytest.fixture(scope="module")
def env(base_settings: Settings) -> Iterator[Env]:
    settings = base_settings.model_copy(
        update={
            "clickhouse_database": unique("iso"),
            "api_keys": ",".join(f"{k}:{t}" for k, t in KEYS.items()),
        }
    )
    admin = connect(settings, database="")
    apply_migrations(admin, settings)
    client = connect(settings)
    insert(client, generate("tenant-a", 1200, seed=21))
    insert(client, generate("tenant-b", 400, seed=22, secret="SecretB "))
    # Hostile events through the worker's own code path: validate -> enrich -> sink insert.
    # (The processor's clock check rejects a call time an hour ahead of now, not in the past.)
    message = json.dumps(_hostile_events()).encode()
    events, rejected = validate_message(message)
    assert not rejected, rejected
    rows = Enricher(PriceBook.load()).rows(events, "calls", 0, 0)
    writer = ClickHouseWriter(settings)
    writer.insert(rows, dedup_token("iso", "calls", 0, 0, 0))
    hostile = {e.source_name or "": (str(e.event_id), e.source_id) for e in events}
    try:
        with TestClient(create_app(settings, clock=lambda: END.timestamp())) as http:
            yield Env(http, settings, hostile)
    finally:
        admin.command(f"DROP DATABASE IF EXISTS `{settings.clickhouse_database}` SYNC")


def _get(env: Env, path: str, params: dict[str, Any], headers: dict[str, str]) -> Any:
    response = env.http.get(f"/v1/usage/{path}", params=params, headers=headers)
    assert response.status_code == 200, response.text
    return response.json()


def _raw(env: Env, sql: str, tenant: str | None) -> Any:
    client = connect(env.settings)
    try:
        where = "WHERE tenant_id = {t:String}" if tenant else ""
        return client.query(f"{sql} {where}", parameters={"t": tenant or ""}).result_rows[0]
    finally:
        client.close()


def test_tenant_isolation_every_aggregate_sums_only_the_callers_rows(env: Env) -> None:
    seen = {}
    for headers, tenant in ((A, "tenant-a"), (B, "tenant-b")):
        calls, cost, tokens = _raw(env, "SELECT count(), sum(cost_usd), sum(input_tokens)"
                                   " FROM usage_events", tenant)  # fmt: skip
        summary = _get(env, "summary", EVERYTHING, headers)
        assert (summary["calls"], Decimal(summary["total_cost_usd"]),
                summary["input_tokens"]) == (calls, cost, tokens)  # fmt: skip
        split = _get(env, "by-source", EVERYTHING, headers)
        assert sum(s["calls"] for s in split["sources"]) == calls
        assert sum(Decimal(s["cost_usd"]) for s in split["sources"]) == cost
        series = _get(env, "timeseries", {**EVERYTHING, "granularity": "day"}, headers)
        assert sum(p["calls"] for p in series["points"]) == calls
        assert sum(Decimal(p["cost_usd"]) for p in series["points"]) == cost
        models = _get(env, "by-model", EVERYTHING, headers)
        assert sum(i["calls"] for i in models["items"]) == calls
        assert sum(Decimal(i["cost_usd"]) for i in models["items"]) == cost
        top = _get(env, "top", {**EVERYTHING, "limit": 100}, headers)
        assert sum(i["calls"] for i in top["items"]) <= calls
        if tenant == "tenant-a":
            assert not any("SecretB" in i["name"] for i in top["items"])
        seen[tenant] = (calls, cost)
    everything = _raw(env, "SELECT count(), sum(cost_usd) FROM usage_events", None)
    assert seen["tenant-a"][0] + seen["tenant-b"][0] == everything[0]
    assert seen["tenant-a"][1] + seen["tenant-b"][1] == everything[1]


def test_tenant_isolation_tenant_is_chosen_by_the_key_only(env: Env) -> None:
    mine = _get(env, "summary", EVERYTHING, A)
    for extra in ({"tenant_id": "tenant-b"}, {"tenant": "tenant-b"}, {"tenant_id[]": "tenant-b"}):
        assert _get(env, "summary", {**EVERYTHING, **extra}, A) == mine
    for header in ("X-Tenant-Id", "X-Tenant", "Tenant", "X-Forwarded-User"):
        assert _get(env, "summary", EVERYTHING, {**A, header: "tenant-b"}) == mine
    # Two Authorization headers: the request is refused or answered as A, never as B.
    theirs = _get(env, "summary", EVERYTHING, B)
    response = env.http.get(
        "/v1/usage/summary", params=EVERYTHING,
        headers=[("Authorization", A["Authorization"]), ("Authorization", B["Authorization"])],
    )  # fmt: skip
    assert response.status_code in (200, 401)
    if response.status_code == 200:
        assert response.json() in (mine, theirs)  # one key decides, wholly


def test_tenant_isolation_forged_cursor_reveals_nothing_of_another_tenant(env: Env) -> None:
    b_rows = _get(env, "records", {**EVERYTHING, "page_size": 5}, B)["items"]
    b_ids = {r["event_id"] for r in _get(env, "records", {**EVERYTHING, "page_size": 100}, B)
             ["items"]}  # fmt: skip
    for row in b_rows:
        at = int(datetime.fromisoformat(row["occurred_at"]).astimezone(UTC).timestamp() * 1000)
        cursor = encode_cursor(at + 1, row["event_id"])
        page = _get(env, "records", {**EVERYTHING, "cursor": cursor, "page_size": 100}, A)
        assert page["items"], "A's own older rows are still listed"
        assert not {r["event_id"] for r in page["items"]} & b_ids
        assert not any(r["name"].startswith("SecretB") for r in page["items"])


def test_injection_hostile_event_strings_are_stored_and_returned_verbatim(env: Env) -> None:
    before = _raw(env, "SELECT count() FROM usage_events", None)[0]
    for name, (event_id, source_id) in env.hostile.items():
        body = _get(env, "records", {**EVERYTHING, "search": name}, A)
        assert [r["event_id"] for r in body["items"]] == [event_id], name
        (item,) = body["items"]
        assert (item["name"], item["source_id"]) == (name, source_id)
        assert _get(env, "records", {**EVERYTHING, "search": name}, B)["total"] == 0
    top = _get(env, "top", {**EVERYTHING, "limit": 100, "by": "tokens"}, A)
    assert set(HOSTILE) <= {i["name"] for i in top["items"]} | set(HOSTILE[len(top["items"]) :])
    assert _raw(env, "SELECT count() FROM usage_events", None)[0] == before


def test_injection_in_every_query_parameter_is_422_or_a_literal_never_5xx(env: Env) -> None:
    before = _raw(env, "SELECT count(), sum(cost_usd) FROM usage_events", None)
    statuses: dict[int, int] = {}
    for path in ENDPOINTS:
        # records takes every parameter: all payloads; the other endpoints a third of them
        payloads = PAYLOADS if path == "records" else PAYLOADS[::3]
        for name in PARAMETERS:
            for payload in payloads:
                params = {**({} if name in ("period", "from", "to") else EVERYTHING),
                          name: payload}  # fmt: skip
                response = env.http.get(f"/v1/usage/{path}", params=params, headers=A)
                statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
                what = (path, name, payload, response.status_code, response.text)
                assert response.status_code in (200, 422), what
                if response.status_code == 422:
                    assert response.json()["detail"], response.text
                else:
                    assert "SecretB" not in response.text
    print(f"status codes: {statuses}")
    assert statuses.get(422, 0) > 0 and statuses.get(200, 0) > 0
    assert _raw(env, "SELECT count(), sum(cost_usd) FROM usage_events", None) == before
    tables = _raw(env, "SELECT count() FROM system.tables WHERE database = currentDatabase()",
                  None)  # fmt: skip
    assert tables[0] >= 6
