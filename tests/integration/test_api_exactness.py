"""Every endpoint equals brute-force SQL over ``usage_events``, to the last decimal.

One generated data set per module (two tenants, renames, unpriced calls, events on and one
millisecond before 15-minute edges, March 2026 DST changes in both hemispheres); hypothesis
draws windows, zones, granularities and filters and compares each endpoint with the oracle.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llm_usage.clickhouse import connect, drop_database, migrate
from llm_usage.settings import Settings
from query_api.app import create_app
from tests.conftest import unique
from tests.integration.test_api_oracle import (
    END,
    START,
    BruteForce,
    Query,
    api_model_totals,
    api_totals,
    bucket_key,
    generate,
    insert,
    iso_ms,
    ms,
    oracle_model_totals,
    oracle_totals,
)

pytestmark = pytest.mark.integration

ZONES = [
    "UTC", "Asia/Kolkata", "Asia/Kathmandu", "Australia/Eucla", "America/St_Johns",
    "America/New_York", "Europe/Berlin", "Australia/Lord_Howe", "Pacific/Chatham",
    "America/Santiago", "Asia/Beirut", "Australia/Adelaide",
]  # fmt: skip
SEARCHES = [None, "alpha", "GAMMA", "o'b", "week", "Digest sync", "zzz-none", "SecretB"]
KEYS = {"key-a": "tenant-a", "key-b": "tenant-b", "key-c": "tenant-c"}
AUTH_A = {"Authorization": "Bearer key-a"}
AUTH_C = {"Authorization": "Bearer key-c"}
NOW_S = (START + timedelta(days=20, hours=5, minutes=7, seconds=3.25)).timestamp()


@dataclass
class Env:
    client: TestClient
    oracle: BruteForce
    settings: Settings
    tenant_b_ids: set[str]


@pytest.fixture(scope="module")
def env(base_settings: Settings) -> Iterator[Env]:
    settings = base_settings.model_copy(
        update={
            "clickhouse_database": unique("api"),
            "api_keys": ",".join(f"{k}:{t}" for k, t in KEYS.items()),
            # cache settled hours at once: every test below also checks the cached answers
            "api_cache_settle_s": 0.0,
        }
    )
    migrate(settings)
    client = connect(settings)
    rows_a = ROWS_A
    rows_b = generate("tenant-b", 600, seed=2, secret="SecretB ")
    insert(client, rows_a, blocks=5)
    insert(client, rows_b, blocks=2)
    # a rename after the last call: the latest name wins everywhere
    client.insert(
        "source_names",
        [["tenant-a", "agent", "agent-1", "Renamed Nightly ALPHA", END + timedelta(days=1)]],
        column_names=["tenant_id", "source", "source_id", "source_name", "named_at"],
    )
    app = create_app(settings, clock=lambda: NOW_S)
    try:
        with TestClient(app) as http:
            yield Env(http, BruteForce(client), settings, {str(r[0]) for r in rows_b})
    finally:
        drop_database(settings)


ROWS_A = generate("tenant-a", 4000, seed=1)
EVENT_MS = sorted(ms(r[2]) for r in ROWS_A)


@st.composite
def instants(draw: st.DrawFn) -> int:
    """Anywhere around the data, or exactly on / one ms beside a real event (edge cases)."""
    if draw(st.booleans()):
        return draw(st.sampled_from(EVENT_MS)) + draw(st.sampled_from([-1, 0, 1]))
    return draw(st.integers(ms(START) - 86_400_000, ms(END) + 86_400_000))


@st.composite
def windows(draw: st.DrawFn) -> tuple[dict[str, str], int, int]:
    """Explicit from/to anywhere in (or around) the data, or a rolling period."""
    if draw(st.integers(0, 5)) == 0:
        period = draw(st.sampled_from(["24h", "7d", "30d"]))
        days = {"24h": 1, "7d": 7, "30d": 30}[period]
        end = int(NOW_S * 1000)
        return {"period": period}, end - days * 86_400_000, end
    start = draw(instants())
    if draw(st.booleans()):
        end = draw(instants())
    else:
        length = draw(st.one_of(st.integers(1, 3 * 3_600_000), st.integers(1, 41 * 86_400_000)))
        end = start + length
    start, end = min(start, end), max(start, end)
    end = min(max(end, start + 1), start + 41 * 86_400_000)
    return {"from": iso_ms(start), "to": iso_ms(end)}, start, end


filters = st.fixed_dictionaries(
    {
        "source": st.sampled_from([None, "chat", "agent", "memory"]),
        "search": st.sampled_from(SEARCHES),
    }
)


def _params(window: dict[str, str], flt: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {**window, **{k: v for k, v in flt.items() if v is not None}, **extra}


def _get(
    env: Env, path: str, params: dict[str, Any], headers: dict[str, str] = AUTH_A
) -> dict[str, Any]:
    response = env.client.get(path, params=params, headers=headers)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


@pytest.mark.sharded
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    window=windows(),
    flt=filters,
    tz=st.sampled_from(ZONES),
    granularity=st.sampled_from(["hour", "day"]),
    by=st.sampled_from(["cost", "tokens"]),
    limit=st.integers(1, 40),
    page=st.integers(1, 6),
    page_size=st.integers(1, 100),
)
def test_every_endpoint_equals_brute_force(
    env: Env,
    window: tuple[dict[str, str], int, int],
    flt: dict[str, Any],
    tz: str,
    granularity: str,
    by: str,
    limit: int,
    page: int,
    page_size: int,
) -> None:
    wparams, start, end = window
    q = Query("tenant-a", start, end, flt["source"], flt["search"])
    _check_endpoints(env, AUTH_A, q, wparams, flt, tz, granularity, by, limit, page, page_size)


def _check_endpoints(
    env: Env,
    auth: dict[str, str],
    q: Query,
    wparams: dict[str, str],
    flt: dict[str, Any],
    tz: str,
    granularity: str,
    by: str,
    limit: int,
    page: int,
    page_size: int,
) -> None:
    """Every endpoint for one window, filter and zone equals brute force over the raw table."""
    start, end = q.start_ms, q.end_ms

    def get(path: str, params: dict[str, Any]) -> dict[str, Any]:
        return _get(env, path, params, auth)

    summary = get("/v1/usage/summary", _params(wparams, flt))
    expected = oracle_totals(env.oracle.summary(q))
    assert api_totals(summary, "total_cost_usd") == expected
    calls, cost = expected[0], expected[6]
    avg = (cost / calls).quantize(Decimal("1e-12")) if calls else Decimal(0)
    assert Decimal(summary["avg_cost_per_call_usd"]) == avg
    assert (_ms(summary["from"]), _ms(summary["to"])) == (start, end)
    unpriced = env.oracle.unpriced_models(q)
    assert [(m["model"], m["calls"]) for m in summary["unpriced_models"]] == unpriced
    assert summary["cost_incomplete"] is bool(unpriced)

    _check_by_model(env, get("/v1/usage/by-model", _params(wparams, flt)), q)

    by_source = get("/v1/usage/by-source", _params(wparams, flt))
    brute = env.oracle.by_source(q)
    assert [s["source"] for s in by_source["sources"]] == (
        [flt["source"]] if flt["source"] else ["chat", "agent", "memory"]
    )
    for item in by_source["sources"]:
        want = brute.get(item["source"], (0, 0, 0, 0, 0, 0, Decimal(0)))
        assert api_totals(item) == oracle_totals(want), item["source"]

    series = get("/v1/usage/timeseries", _params(wparams, flt, tz=tz, granularity=granularity))
    keys = [bucket_key(p["bucket_start"], granularity) for p in series["points"]]
    assert len(keys) == len(set(keys)), "one point per local bucket"
    got = {k: api_totals(p) for k, p in zip(keys, series["points"], strict=True)}
    for key, row in env.oracle.timeseries(q, tz, granularity).items():
        assert got.pop(key) == oracle_totals(row, unpriced=False), key
    assert all(v[0] == 0 and v[6] == 0 for v in got.values()), "other buckets are empty"
    starts = [p["bucket_start"] for p in series["points"]]
    assert starts == sorted(starts, key=lambda s: _utc(s)), "points in time order"

    top = get("/v1/usage/top", _params(wparams, flt, by=by, limit=limit))
    names = env.oracle.latest_names(q.tenant)
    want_top = env.oracle.top(q, by, limit)
    assert [(i["source"], i["source_id"]) for i in top["items"]] == [r[:2] for r in want_top]
    for item, row in zip(top["items"], want_top, strict=True):
        assert api_totals(item) == oracle_totals(row[2:], unpriced=False)
        assert item["name"] == names.get((row[0], row[1]), "")

    records = get("/v1/usage/records", _params(wparams, flt, page=page, page_size=page_size))
    ids, total = env.oracle.records(q, (page - 1) * page_size, page_size)
    assert [r["event_id"] for r in records["items"]] == ids
    assert records["total"] == total
    assert records["total_pages"] == math.ceil(total / page_size)


def _check_by_model(env: Env, body: dict[str, Any], q: Query) -> None:
    """Cost by model and tier, and per model, equal brute force, in the same order."""
    want = env.oracle.by_model(q)
    assert [(i["model"], i["price_tier"]) for i in body["items"]] == [r[:2] for r in want]
    for item, row in zip(body["items"], want, strict=True):
        assert api_model_totals(item) == oracle_model_totals(row[2:]), row[:2]
        assert item["priced"] is (row[3] == 0)
        assert item["total_tokens"] == sum(row[4:8])
    per_model = env.oracle.per_model(q)
    assert [m["model"] for m in body["models"]] == [r[0] for r in per_model]
    for model, row in zip(body["models"], per_model, strict=True):
        assert api_model_totals(model) == oracle_model_totals(row[1:]), row[0]
        assert set(model["price_tiers"]) == {r[1] for r in want if r[0] == row[0]}
    total = oracle_totals(env.oracle.summary(q))
    assert (body["calls"], body["unpriced_calls"], Decimal(body["total_cost_usd"])) == (
        total[0], total[1], total[6]
    )  # fmt: skip


def _utc(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def _ms(iso: str) -> int:
    return ms(datetime.fromisoformat(iso))


def test_tenant_isolation(env: Env) -> None:
    """Tenant A never sees tenant B's rows, names or totals, whatever it searches for."""
    everything = {"from": iso_ms(ms(START) - 1), "to": iso_ms(ms(END) + 1)}
    seen: set[str] = set()
    cursor: str | None = None
    while True:
        params = {**everything, "page_size": 100, **({"cursor": cursor} if cursor else {})}
        body = _get(env, "/v1/usage/records", params)
        seen |= {r["event_id"] for r in body["items"]}
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == 4000 and not seen & env.tenant_b_ids
    secret = _get(env, "/v1/usage/records", {**everything, "search": "SecretB"})
    assert secret["items"] == [] and secret["total"] == 0
    top = _get(env, "/v1/usage/top", {**everything, "limit": 100})
    assert not any("SecretB" in i["name"] for i in top["items"])
    summary = _get(env, "/v1/usage/summary", everything)
    assert summary["calls"] == 4000
    as_b = env.client.get(
        "/v1/usage/summary", params=everything, headers={"Authorization": "Bearer key-b"}
    ).json()
    assert as_b["calls"] == 600


@pytest.mark.parametrize(
    "search",
    [
        "'; DROP TABLE usage_events; --",
        "' OR 1=1 OR '",
        '") OR ("1"="1',
        "\\' OR tenant_id != '",
        "{p0:String}",
        "%_%",
        "o'Brien",
    ],
)
def test_sql_injection_search_is_just_a_string(env: Env, search: str) -> None:
    """A search full of quotes and SQL matches names literally and harms nothing."""
    everything = {"from": iso_ms(ms(START) - 1), "to": iso_ms(ms(END) + 1)}
    for path in ("/v1/usage/records", "/v1/usage/summary", "/v1/usage/top", "/v1/usage/by-model"):
        response = env.client.get(path, params={**everything, "search": search}, headers=AUTH_A)
        assert response.status_code == 200, response.text
    body = _get(env, "/v1/usage/records", {**everything, "search": search})
    names = env.oracle.latest_names("tenant-a")
    expected = {k for k, n in names.items() if search.lower() in n.lower()}
    assert {(r["source"], r["source_id"]) for r in body["items"]} <= expected
    assert bool(expected) == (body["total"] > 0)
    assert env.oracle.summary(Query("tenant-a", ms(START) - 1, ms(END) + 1))[0] == 4000


def test_window_edges_are_half_open(env: Env) -> None:
    """A call exactly at ``from`` counts, one exactly at ``to`` does not (raw edge pieces)."""
    unaligned = [t for t in EVENT_MS if t % 900_000][::400]
    for t in unaligned:
        for start, end in ((t, t + 1), (t - 7, t), (t, t + 3_600_123), (t - 5_000_000, t)):
            q = Query("tenant-a", start, end)
            window = {"from": iso_ms(start), "to": iso_ms(end)}
            got = _get(env, "/v1/usage/summary", window)
            assert api_totals(got, "total_cost_usd") == oracle_totals(env.oracle.summary(q))
            series = _get(env, "/v1/usage/timeseries", {**window, "tz": "Asia/Kathmandu"})
            assert sum(p["calls"] for p in series["points"]) == got["calls"]
            records = _get(env, "/v1/usage/records", window)
            assert records["total"] == got["calls"] == len(env.oracle.records(q, 0, 100)[0])
            _check_by_model(env, _get(env, "/v1/usage/by-model", window), q)


def test_broad_searches_fall_back_to_a_subquery_and_stay_exact(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A search matching more entities than are bound as a list is a subquery: same numbers."""
    from query_api import repository

    monkeypatch.setattr(repository, "MAX_BOUND_MATCHES", 1)
    start, end = ms(START) + 12_345, ms(START) + 9 * 86_400_000 + 67
    window = {"from": iso_ms(start), "to": iso_ms(end)}
    for search in ("a", "Digest", "zzz-none"):
        q = Query("tenant-a", start, end, None, search)
        summary = _get(env, "/v1/usage/summary", {**window, "search": search})
        assert api_totals(summary, "total_cost_usd") == oracle_totals(env.oracle.summary(q))
        records = _get(env, "/v1/usage/records", {**window, "search": search, "page": 2})
        ids, total = env.oracle.records(q, 20, 20)
        assert [r["event_id"] for r in records["items"]] == ids and records["total"] == total
        top = _get(env, "/v1/usage/top", {**window, "search": search, "limit": 5})
        assert [(i["source"], i["source_id"]) for i in top["items"]] == [
            r[:2] for r in env.oracle.top(q, "cost", 5)
        ]
        _check_by_model(env, _get(env, "/v1/usage/by-model", {**window, "search": search}), q)
        assert [(m["model"], m["calls"]) for m in summary["unpriced_models"]] == (
            env.oracle.unpriced_models(q)
        )


def _cache_hits(env: Env) -> float:
    text = env.client.get("/metrics").text
    hits = [x for x in text.splitlines() if x.startswith("llm_usage_api_cache_lookups_total")]
    hits = [x for x in hits if 'result="hit"' in x]
    assert hits, text
    return float(hits[0].split()[-1])


def test_late_events_into_cached_hours_count_at_once(env: Env) -> None:
    """Settled hours are served from the cache, and a late event into one of them retires
    the cached aggregate: the next answer equals brute force again, every endpoint."""
    client = connect(env.settings)
    insert(client, generate("tenant-c", 900, seed=3), blocks=3)
    now = int(NOW_S * 1000)
    cases: list[tuple[dict[str, str], int, int, dict[str, Any]]] = [
        ({"period": "30d"}, now - 30 * 86_400_000, now, {"source": None, "search": None}),
        ({"period": "7d"}, now - 7 * 86_400_000, now, {"source": "agent", "search": None}),
        ({"period": "24h"}, now - 86_400_000, now, {"source": None, "search": "alpha"}),
        (
            {"from": iso_ms(ms(START) + 1_234), "to": iso_ms(ms(END) - 777)},
            ms(START) + 1_234,
            ms(END) - 777,
            {"source": "chat", "search": None},
        ),
    ]

    def check_all() -> None:
        for wparams, start, end, flt in cases:
            q = Query("tenant-c", start, end, flt["source"], flt["search"])
            for tz, granularity, by in (("UTC", "hour", "cost"), ("Asia/Kolkata", "day", "tokens")):
                _check_endpoints(env, AUTH_C, q, wparams, flt, tz, granularity, by, 7, 2, 13)

    check_all()
    before = _cache_hits(env)
    check_all()
    assert _cache_hits(env) > before, "the second pass reads settled hours from the cache"
    # late calls into hours the cache holds (spread over the whole data range)
    insert(client, generate("tenant-c", 120, seed=4), blocks=1)
    check_all()


@pytest.mark.timeout(120)
def test_many_concurrent_requests_all_answer(env: Env) -> None:
    """More concurrent requests than the repository has query threads (a records page waits
    for its total while its own queries run), beside every other endpoint: all answer."""
    requests = [("/v1/usage/records", period) for period in ("24h", "7d", "30d") * 12]
    for path in ("/v1/usage/summary", "/v1/usage/top", "/v1/usage/timeseries"):
        requests += [(path, period) for period in ("24h", "7d", "30d")]
    with ThreadPoolExecutor(max_workers=len(requests)) as pool:
        futures = [
            pool.submit(env.client.get, path, params={"period": period}, headers=AUTH_A)
            for path, period in requests
        ]
        statuses = [f.result(timeout=90).status_code for f in futures]
    assert statuses == [200] * len(futures)
