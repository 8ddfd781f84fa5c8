"""Attribution by any dimension: ``attr.<key>=<value>`` filters on every usage endpoint,
``/v1/usage/breakdown`` and ``/v1/usage/attributes`` equal brute force over ``usage_events``.

The data is the exactness tests' tenant-a (the same calls, so their window strategy hits
real event instants and 15-minute edges) with attributes added by a second random stream:
heavy-tailed users, a few customers, features on agents, mostly-production environments,
and a fifth of the calls with no attributes at all (they have no attribute rollup row).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llm_usage.clickhouse import connect, drop_database, migrate
from llm_usage.settings import Settings
from producers.contract import UsageEvent
from query_api.app import create_app
from stream_processor.harness import WorkerProcess
from tests.conftest import committed_everything, unique, wait_for
from tests.integration.test_api_exactness import (
    AUTH_A,
    KEYS,
    NOW_S,
    ROWS_A,
    Env,
    _check_endpoints,
    _get,
    windows,
)
from tests.integration.test_api_oracle import (
    COLUMNS,
    END,
    START,
    BruteForce,
    Query,
    generate,
    iso_ms,
    ms,
)
from tests.integration.test_processor_e2e import TEMPLATES, publish, worker_settings

pytestmark = pytest.mark.integration

ATTR_COLUMNS = [*COLUMNS, "attributes"]
USERS = [f"user-{i}" for i in range(40)] + ['o\'Brien "quoted"', "ünïcode ✓"]
CUSTOMERS = ["acme", "globex", "initech", "umbrella"]
FEATURES = ["digest", "triage", "search.v2"]
ZONES = ["Asia/Kathmandu", "America/St_Johns", "Europe/Berlin"]  # +05:45, -03:30 with DST
SEARCHES = [None, "alpha", "Digest sync", "zzz-none"]


def _attributes(rng: random.Random, source: str) -> dict[str, str]:
    """A call's attributes; a fifth of the calls have none, others only some keys."""
    if rng.random() < 0.2:
        return {}
    attributes: dict[str, str] = {}
    if source == "chat" or rng.random() < 0.3:
        attributes["user"] = USERS[min(int(rng.paretovariate(1.2)) - 1, len(USERS) - 1)]
        if rng.random() < 0.05:
            attributes["user"] = rng.choice(USERS[-2:])
    if rng.random() < 0.9:
        attributes["customer"] = rng.choices(CUSTOMERS, [50, 25, 15, 10])[0]
    if source == "agent":
        attributes["feature"] = rng.choice(FEATURES)
    if rng.random() < 0.7:
        attributes["environment"] = "production" if rng.random() < 0.9 else "staging"
    return attributes


def with_attributes(rows: list[list[Any]], seed: int) -> list[list[Any]]:
    rng = random.Random(f"attributes-{seed}")
    return [[*row, _attributes(rng, row[3])] for row in rows]


ATTR_ROWS_A = with_attributes(ROWS_A, 1)


@dataclass(frozen=True)
class AttrQuery(Query):
    attributes: tuple[tuple[str, str], ...] = ()


class AttrOracle(BruteForce):
    """:class:`BruteForce` with ``attr.`` filters, a breakdown and the key listing."""

    def _where(self, q: Query) -> tuple[str, dict[str, Any]]:
        where, params = super()._where(q)
        for i, (key, value) in enumerate(getattr(q, "attributes", ())):
            where += f" AND attributes[{{ak{i}:String}}] = {{av{i}:String}}"
            params[f"ak{i}"], params[f"av{i}"] = key, value
        return where, params

    _GROUP_SUMS = (
        "count(), sum(input_tokens), sum(output_tokens), sum(cache_read_input_tokens),"
        " sum(cache_creation_input_tokens), sum(cost_usd)"
    )

    def breakdown(self, q: Query, by: str) -> list[tuple[Any, ...]]:
        """(key, calls, input, output, cache read, cache write, cost), as the API orders them."""
        where, params = self._where(q)
        if by == "source":
            key = "toString(source)"
        elif by == "model":
            key = "model"
        else:
            key = "if(mapContains(attributes, {gk:String}), attributes[{gk:String}], NULL)"
            params["gk"] = by.removeprefix("attr.")
        sql = f"SELECT {key} AS k, {self._GROUP_SUMS} FROM usage_events WHERE {where} GROUP BY k"
        rows = [tuple(r) for r in self.client.query(sql, parameters=params).result_rows]
        return sorted(rows, key=lambda r: (-r[6], -r[1], r[0] is None, r[0] or ""))

    def without(self, q: Query, key: str) -> tuple[Any, ...]:
        """(calls, input, output, cache read, cache write, cost) of the calls without ``key``."""
        where, params = self._where(q)
        sql = (
            f"SELECT {self._GROUP_SUMS} FROM usage_events"
            f" WHERE {where} AND NOT mapContains(attributes, {{nk:String}})"
        )
        return tuple(self.client.query(sql, parameters={**params, "nk": key}).result_rows[0])

    def attribute_values(self, q: Query) -> dict[str, list[tuple[str, int, Decimal]]]:
        """Per key, every (value, calls, cost) in the window."""
        where, params = self._where(q)
        sql = (
            "SELECT k, v, count(), sum(cost_usd) FROM usage_events"
            f" ARRAY JOIN mapKeys(attributes) AS k, mapValues(attributes) AS v WHERE {where}"
            " GROUP BY k, v"
        )
        found: dict[str, list[tuple[str, int, Decimal]]] = {}
        for k, v, calls, cost in self.client.query(sql, parameters=params).result_rows:
            found.setdefault(k, []).append((v, int(calls), Decimal(cost)))
        return found


@pytest.fixture(scope="module")
def env(base_settings: Settings) -> Iterator[Env]:
    settings = base_settings.model_copy(
        update={
            "clickhouse_database": unique("attrs"),
            "api_keys": ",".join(f"{k}:{t}" for k, t in KEYS.items()),
            "api_cache_settle_s": 0.0,  # cached settled hours are checked too
        }
    )
    migrate(settings)
    client = connect(settings)
    rows_b = with_attributes(generate("tenant-b", 600, seed=2, secret="SecretB "), 2)
    for rows, blocks in ((ATTR_ROWS_A, 5), (rows_b, 2)):
        size = -(-len(rows) // blocks)
        for i in range(0, len(rows), size):
            client.insert("usage_events", rows[i : i + size], column_names=ATTR_COLUMNS)
    app = create_app(settings, clock=lambda: NOW_S)
    try:
        with TestClient(app) as http:
            yield Env(http, AttrOracle(client), settings, {str(r[0]) for r in rows_b})
    finally:
        drop_database(settings)


def _oracle(env: Env) -> AttrOracle:
    assert isinstance(env.oracle, AttrOracle)
    return env.oracle


ATTR_FILTERS: list[dict[str, str]] = [
    {},
    {"user": "user-0"},
    {"user": "user-3"},
    {"user": 'o\'Brien "quoted"'},
    {"customer": "globex"},
    {"feature": "search.v2"},
    {"environment": "staging"},
    {"customer": "acme", "environment": "production"},
    {"customer": "initech", "feature": "digest", "user": "user-0"},
    {"user": "nobody"},
    {"color": "blue"},
]

attr_filters = st.sampled_from(ATTR_FILTERS)
filters = st.fixed_dictionaries(
    {
        "source": st.sampled_from([None, "chat", "agent", "memory"]),
        "search": st.sampled_from(SEARCHES),
    }
)
BYS = ["source", "model", "attr.user", "attr.customer", "attr.feature", "attr.environment",
       "attr.color"]  # fmt: skip


def _query(start: int, end: int, flt: dict[str, Any], attrs: dict[str, str]) -> AttrQuery:
    return AttrQuery(
        "tenant-a", start, end, flt["source"], flt["search"], tuple(sorted(attrs.items()))
    )


def _with_attrs(flt: dict[str, Any], attrs: dict[str, str]) -> dict[str, Any]:
    return {**flt, **{f"attr.{k}": v for k, v in attrs.items()}}


def _check_breakdown(
    env: Env, wparams: dict[str, str], flt: dict[str, Any], q: AttrQuery, by: str, limit: int
) -> None:
    params = {k: v for k, v in flt.items() if v is not None}
    body = _get(env, "/v1/usage/breakdown", {**wparams, **params, "by": by, "limit": limit})
    want = _oracle(env).breakdown(q, by)
    total = sum((r[6] for r in want), Decimal(0))
    assert body["by"] == by and body["limit"] == limit
    assert Decimal(body["total_cost_usd"]) == total
    # the first `limit` groups with a key, and the one without (key null) wherever it sorts:
    # it never counts against limit nor goes into other
    valued = [r for r in want if r[0] is not None]
    listed = [r for r in want if r[0] is None or r in valued[:limit]]
    got = [_group(g) for g in body["groups"]]
    assert got == [_want(r) for r in listed], by
    for group, row in zip(body["groups"], listed, strict=True):
        assert group["share"] == pytest.approx(float(row[6] / total) if total else 0.0)
    if len(valued) <= limit:
        assert body["other"] is None
    else:
        rest = valued[limit:]
        other = body["other"]
        assert other["key"] is None and other["groups"] == len(rest)
        sums = tuple(sum(r[i] for r in rest) for i in range(1, 7))
        assert _group(other)[1:] == (*map(int, sums[:5]), Decimal(sums[5]))
    if by.startswith("attr."):
        assert (
            sum(g["calls"] for g in body["groups"])
            + (body["other"]["calls"] if body["other"] else 0)
            == _oracle(env).summary(q)[0]
        ), "every call is in one group, none twice"


def _group(g: dict[str, Any]) -> tuple[Any, ...]:
    return (
        g["key"],
        g["calls"],
        g["input_tokens"],
        g["output_tokens"],
        g["cache_read_tokens"],
        g["cache_write_tokens"],
        Decimal(g["cost_usd"]),
    )


def _want(row: tuple[Any, ...]) -> tuple[Any, ...]:
    key, *counts, cost = row
    return (None if key is None else str(key), *map(int, counts), Decimal(cost))


def _check_attributes(env: Env, wparams: dict[str, str], flt: dict[str, Any], q: AttrQuery) -> None:
    params = {k: v for k, v in flt.items() if v is not None}
    body = _get(env, "/v1/usage/attributes", {**wparams, **params, "top": 3})
    want = _oracle(env).attribute_values(q)
    assert [k["key"] for k in body["keys"]] == sorted(want)
    for item in body["keys"]:
        values = want[item["key"]]
        assert item["values"] == len(values)
        assert item["calls"] == sum(c for _, c, _ in values)
        assert Decimal(item["cost_usd"]) == sum((cost for _, _, cost in values), Decimal(0))
        ranked = sorted(values, key=lambda v: (-v[2], -v[1], v[0]))[:3]
        got = [(v["value"], v["calls"], Decimal(v["cost_usd"])) for v in item["top_values"]]
        assert got == ranked


@pytest.mark.sharded
@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    window=windows(),
    flt=filters,
    attrs=attr_filters,
    tz=st.sampled_from(ZONES),
    granularity=st.sampled_from(["hour", "day"]),
    by=st.sampled_from(["cost", "tokens"]),
    limit=st.integers(1, 40),
    page=st.integers(1, 4),
    page_size=st.integers(1, 100),
)
def test_every_endpoint_with_attr_filters_equals_brute_force(
    env: Env,
    window: tuple[dict[str, str], int, int],
    flt: dict[str, Any],
    attrs: dict[str, str],
    tz: str,
    granularity: str,
    by: str,
    limit: int,
    page: int,
    page_size: int,
) -> None:
    wparams, start, end = window
    q = _query(start, end, flt, attrs)
    flt = _with_attrs(flt, attrs)
    _check_endpoints(env, AUTH_A, q, wparams, flt, tz, granularity, by, limit, page, page_size)
    _check_breakdown(env, wparams, flt, q, "attr.user", limit)
    _check_attributes(env, wparams, flt, q)


@pytest.mark.sharded
@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    window=windows(),
    flt=filters,
    attrs=attr_filters,
    by=st.sampled_from(BYS),
    limit=st.sampled_from([1, 2, 3, 5, 20, 1000]),
)
def test_breakdown_by_every_dimension_equals_brute_force(
    env: Env,
    window: tuple[dict[str, str], int, int],
    flt: dict[str, Any],
    attrs: dict[str, str],
    by: str,
    limit: int,
) -> None:
    wparams, start, end = window
    q = _query(start, end, flt, attrs)
    _check_breakdown(env, wparams, _with_attrs(flt, attrs), q, by, limit)


def test_whole_data_breakdowns_and_defaults(env: Env) -> None:
    """Over all the data: every key's groups (with the no-value group) sum to the total,
    twice (the second time from the settled-hours cache), and tenant B stays apart."""
    everything = {"from": iso_ms(ms(START) - 1), "to": iso_ms(ms(END) + 1)}
    whole = AttrQuery("tenant-a", ms(START) - 1, ms(END) + 1)
    for _ in range(2):
        for by in BYS:
            _check_breakdown(env, everything, {"source": None}, whole, by, 20)
    body = _get(env, "/v1/usage/breakdown", everything)
    assert body["by"] == "source" and body["limit"] == 20 and body["other"] is None
    users = _get(env, "/v1/usage/breakdown", {**everything, "by": "attr.user"})
    assert None in [g["key"] for g in users["groups"]], "calls without a user form a group"
    assert sum(g["share"] for g in users["groups"]) + (
        users["other"]["share"] if users["other"] else 0
    ) == pytest.approx(1.0)
    keys = _get(env, "/v1/usage/attributes", everything)["keys"]
    assert [k["key"] for k in keys] == ["customer", "environment", "feature", "user"]
    assert all(len(k["top_values"]) <= 5 for k in keys)
    as_b = env.client.get(
        "/v1/usage/summary",
        params={**everything, "attr.user": "user-0"},
        headers={"Authorization": "Bearer key-b"},
    ).json()
    b_rows = with_attributes(generate("tenant-b", 600, seed=2, secret="SecretB "), 2)
    assert as_b["calls"] == sum(1 for r in b_rows if r[-1].get("user") == "user-0")
    empty = _get(env, "/v1/usage/breakdown", {**everything, "by": "attr.color"})
    assert empty["groups"][0]["key"] is None and empty["groups"][0]["share"] == 1.0


def test_the_null_group_is_the_calls_without_the_key_and_always_listed(env: Env) -> None:
    """The key-null group equals brute force (``NOT mapContains``) with a source filter, a
    name search and attr filters, however many groups ``limit`` cuts: it is listed whenever
    it has calls, never in ``other``, and ``other.groups`` counts values only."""
    oracle = _oracle(env)
    everything = (ms(START) - 1, ms(END) + 1)
    rng = random.Random(2626)
    spans = [everything]
    for _ in range(3):
        a = rng.randrange(ms(START), ms(END))
        spans.append((a, a + rng.randrange(3_600_000, 9 * 86_400_000)))
    past_limit = 0
    for (start, end), source, search, attrs in [
        (span, source, search, attrs)
        for span in spans
        for source, search in ((None, None), ("chat", None), (None, "alpha"), ("agent", "a"))
        for attrs in ({}, {"customer": "acme"}, {"environment": "production"})
    ]:
        wparams = {"from": iso_ms(start), "to": iso_ms(end)}
        q = _query(start, end, {"source": source, "search": search}, attrs)
        flt = {k: v for k, v in _with_attrs({"source": source, "search": search}, attrs).items()
               if v is not None}  # fmt: skip
        for key in ("user", "customer", "feature", "environment"):
            body = _get(env, "/v1/usage/breakdown", {**wparams, **flt, "by": f"attr.{key}",
                                                     "limit": 1})  # fmt: skip
            nulls = [g for g in body["groups"] if g["key"] is None]
            calls, *sums, cost = oracle.without(q, key)
            if not calls:
                assert nulls == [], (key, q)
            else:
                assert [_group(g)[1:] for g in nulls] == [
                    (calls, *map(int, sums), Decimal(cost))
                ], (key, q)
                past_limit += body["groups"].index(nulls[0]) >= 1
            valued = [g for g in body["groups"] if g["key"] is not None]
            assert len(valued) <= 1
            values = len({r[0] for r in oracle.breakdown(q, f"attr.{key}") if r[0] is not None})
            assert (body["other"]["groups"] if body["other"] else 0) == values - len(valued)
    assert past_limit > 10, "the null group often sorts past the limit: the case is exercised"


@pytest.mark.parametrize(
    ("path", "params", "message"),
    [
        ("summary", {"attr.User": "x"}, "attr.User: the attribute key must match"),
        ("summary", {"attr.": "x"}, "attribute key must match"),
        ("by-source", {"attr.9user": "x"}, "must match"),
        ("timeseries", {"attr." + "k" * 65: "x"}, "must match"),
        ("top", {"attr.user": ""}, "1 to 256 characters"),
        ("records", {"attr.user": "x" * 257}, "1 to 256 characters"),
        ("by-model", {"attr.user": ["a", "b"]}, "attr.user is given twice"),
        ("breakdown", {f"attr.k{i}": "v" for i in range(17)}, "at most 16"),
        ("breakdown", {"by": "user"}, "by: use source, model or attr.<key>"),
        ("breakdown", {"by": "attr.Bad-Key"}, "by: the attribute key must match"),
        ("breakdown", {"by": "attr." + "k" * 70}, "by"),
        ("breakdown", {"limit": 0}, "limit"),
        ("breakdown", {"limit": 1001}, "limit"),
        ("attributes", {"attr.a b": "x"}, "must match"),
        ("attributes", {"top": 0}, "top"),
    ],
)
def test_bad_attr_parameters_get_422_with_a_message(
    env: Env, path: str, params: dict[str, Any], message: str
) -> None:
    response = env.client.get(f"/v1/usage/{path}", params=params, headers=AUTH_A)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, str) and message in detail


def test_sixteen_filters_are_allowed_and_the_openapi_documents_them(env: Env) -> None:
    params = {f"attr.k{i}": "v" for i in range(16)}
    assert env.client.get("/v1/usage/summary", params=params, headers=AUTH_A).status_code == 200
    spec = env.client.get("/openapi.json").json()
    for path in ("summary", "timeseries", "by-source", "by-model", "top", "records",
                 "breakdown", "attributes"):  # fmt: skip
        names = [p["name"] for p in spec["paths"][f"/v1/usage/{path}"]["get"]["parameters"]]
        assert "attr.<key>" in names, path


def test_published_calls_end_to_end(
    migrated: Settings, worker_factory: Callable[[Settings], WorkerProcess]
) -> None:
    """Calls published through producers/ and stored by a real worker: breakdowns by each
    key and attr-filtered answers equal brute force, for windows with unaligned edges."""
    settings = worker_settings(migrated, api_keys="key-a:tenant-a", api_cache_settle_s=0.0)
    worker_factory(settings)
    rng = random.Random(26)
    now = datetime.now(UTC)
    events = []
    for i in range(600):
        model, usage, _ = TEMPLATES[i % len(TEMPLATES)]
        source = ("chat", "agent", "memory")[i % 3]
        events.append(
            UsageEvent(
                tenant_id="tenant-a",
                occurred_at=now - timedelta(milliseconds=rng.randrange(3 * 86_400_000)),
                source=source,
                source_id=f"src-{i % 7}",
                source_name=f"Name {i % 7}",
                model=model,
                attributes=_attributes(rng, source),
                **usage,
            )
        )
    asyncio.run(publish(settings, events))
    oracle = AttrOracle(connect(settings))

    def stored() -> bool:
        rollup = "SELECT sum(calls) FROM usage_attributes_15m WHERE attr_key = 'customer'"
        with_customer = sum(1 for e in events if "customer" in e.attributes)
        return (
            committed_everything(settings)
            and oracle.client.query(rollup).result_rows[0][0] == with_customer
        )

    wait_for(stored, 90, "the worker to store every call and its attribute rollups")
    time.sleep(0.5)  # the last views of the last insert
    now_ms = ms(now)
    windows_ms = [(now_ms - 3 * 86_400_000 - 5, now_ms + 1), (now_ms - 40_000_123, now_ms - 7_777)]
    with TestClient(create_app(settings)) as http:
        env = Env(http, oracle, settings, set())
        for start, end in windows_ms:
            wparams = {"from": iso_ms(start), "to": iso_ms(end)}
            for by in BYS:
                for source in (None, "chat"):
                    q = _query(start, end, {"source": source, "search": None}, {})
                    _check_breakdown(env, wparams, {"source": source}, q, by, 3)
            for attrs, tz in (({"customer": "acme"}, "Asia/Kathmandu"),
                              ({"user": "user-0", "environment": "production"}, "UTC"),
                              ({"feature": "triage"}, "America/St_Johns")):  # fmt: skip
                flt = {"source": None, "search": "name 1"}
                q = _query(start, end, flt, attrs)
                _check_endpoints(
                    env, AUTH_A, q, wparams, _with_attrs(flt, attrs), tz, "hour", "cost", 5, 1, 50
                )
                _check_attributes(env, wparams, _with_attrs(flt, attrs), q)
