"""Generated usage data and brute-force SQL over ``usage_events``: the API tests' oracle.

The oracle never uses the API's window, bucket or rollup code: it filters raw rows by
instant, buckets them with ClickHouse's own time-zone functions and matches names in Python.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from clickhouse_connect.driver.client import Client

from stream_processor.pricing.book import price_tier

# price_tier and token_cost_usd are MATERIALIZED: ClickHouse computes them, inserts omit them
COLUMNS = [
    "event_id", "tenant_id", "occurred_at", "source", "source_id", "source_name", "model",
    "input_tokens", "output_tokens", "cache_creation_input_tokens", "cache_read_input_tokens",
    "cost_usd", "priced", "duration_ms", "status", "kafka_topic", "kafka_partition",
    "kafka_offset", "service_tier", "speed", "web_search_requests", "tool_cost_usd",
]  # fmt: skip
# Models the generated unpriced calls use (besides a few of the priced models' names).
UNKNOWN_MODELS = ["claude-future-9", "acme-llm-2"]
TIERS = ["standard", "batch", "fast", "priority"]
# The (service_tier, speed) of calls of each price tier: batch wins over fast, fast over priority.
CALLS_OF_TIER = {
    "standard": [("standard", "standard")],
    "batch": [("batch", "standard"), ("batch", "fast")],
    "fast": [("standard", "fast"), ("priority", "fast")],
    "priority": [("priority", "standard")],
}

WORDS = ["Alpha", "beta", "GAMMA", "Delta", "o'Brien", "weekly", "Digest", "sync", "Report"]
START = datetime(2026, 3, 1, tzinfo=UTC)
END = datetime(2026, 4, 9, tzinfo=UTC)
ALIGNED = [timedelta(0), timedelta(minutes=15), timedelta(minutes=30), timedelta(minutes=45)]


def _name(rng: random.Random) -> str:
    return " ".join(rng.sample(WORDS, rng.randint(1, 3)))


def _instant(rng: random.Random, start: datetime, end: datetime) -> datetime:
    """Random instants, a third of them on (or a millisecond before) a 15-minute edge."""
    span_ms = int((end - start).total_seconds() * 1000)
    moment = start + timedelta(milliseconds=rng.randrange(span_ms))
    roll = rng.random()
    if roll < 0.33:
        moment = moment.replace(minute=0, second=0, microsecond=0) + rng.choice(ALIGNED)
        if rng.random() < 0.3:
            moment -= timedelta(milliseconds=1)
    return moment


def _billing(rng: random.Random, row: list[Any]) -> None:
    """Service tier and speed (hence the price tier, unpriced calls too), web searches and
    the tool part of the cost; unknown models if unpriced.

    A second random stream, so the columns above stay what they always were.
    """
    priced, cost = row[12], row[11]
    if not priced and rng.random() < 0.7:
        row[6] = rng.choice(UNKNOWN_MODELS)
    service_tier, speed = rng.choice(CALLS_OF_TIER[rng.choices(TIERS, [70, 15, 10, 5])[0]])
    searches = rng.randint(1, 5) if rng.random() < 0.1 else 0
    tool = (cost * searches / 10).quantize(Decimal("1e-12")) if priced else Decimal(0)
    row.extend([service_tier, speed, searches, tool])


def tier_of(row: Sequence[Any]) -> str:
    """The price tier of a generated row (ClickHouse computes it from the same columns)."""
    return price_tier(row[COLUMNS.index("service_tier")], row[COLUMNS.index("speed")])


def generate(tenant: str, n: int, seed: int, *, secret: str = "") -> list[list[Any]]:
    """``n`` events of ``tenant`` between START and END; names drift (renames); calls of
    unknown models, batch / fast / priority tiers and web searches among them."""
    rng = random.Random(seed)
    billing = random.Random(f"billing-{seed}")
    ids = {"chat": [f"conv-{i}" for i in range(25)], "agent": [f"agent-{i}" for i in range(6)],
           "memory": [f"conv-{i}" for i in range(0, 25, 3)]}  # fmt: skip
    rows: list[list[Any]] = []
    for i in range(n):
        source = rng.choices(["chat", "agent", "memory"], [6, 3, 1])[0]
        priced = rng.random() > 0.05
        cost = Decimal(rng.randrange(10**10)).scaleb(-12) if priced else Decimal(0)
        name = "" if rng.random() < 0.05 else f"{secret}{_name(rng)}"
        rows.append([
            uuid.UUID(int=rng.getrandbits(128)), tenant, _instant(rng, START, END), source,
            rng.choice(ids[source]), name, rng.choice(["claude-sonnet-4-5", "claude-haiku-4-5"]),
            rng.randrange(50_000), rng.randrange(5_000), rng.randrange(2_000) * (i % 2),
            rng.randrange(20_000) * (i % 3 == 0), cost, priced, rng.randrange(60_000),
            "ok" if rng.random() > 0.1 else "error", "calls", 0, i,
        ])  # fmt: skip
        _billing(billing, rows[-1])
    return rows


def insert(client: Client, rows: Sequence[list[Any]], blocks: int = 4) -> None:
    """Insert in several blocks so rollups hold unmerged partial rows, as in production."""
    size = -(-len(rows) // blocks)
    for i in range(0, len(rows), size):
        client.insert("usage_events", list(rows[i : i + size]), column_names=COLUMNS)


def ms(moment: datetime) -> int:
    return (moment - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)


@dataclass(frozen=True)
class Query:
    tenant: str
    start_ms: int
    end_ms: int
    source: str | None = None
    search: str | None = None


class BruteForce:
    """Every endpoint's answer computed straight from ``usage_events``."""

    def __init__(self, client: Client) -> None:
        self.client = client

    def latest_names(self, tenant: str) -> dict[tuple[str, str], str]:
        rows = self.client.query(
            "SELECT toString(source), source_id, argMax(source_name, named_at)"
            " FROM source_names WHERE tenant_id = {t:String} GROUP BY source, source_id",
            parameters={"t": tenant},
        ).result_rows
        return {(s, i): n for s, i, n in rows}

    def _where(self, q: Query) -> tuple[str, dict[str, Any]]:
        where = (
            "tenant_id = {t:String}"
            " AND occurred_at >= fromUnixTimestamp64Milli({a:Int64}, 'UTC')"
            " AND occurred_at < fromUnixTimestamp64Milli({b:Int64}, 'UTC')"
        )
        params: dict[str, Any] = {"t": q.tenant, "a": q.start_ms, "b": q.end_ms}
        if q.source:
            where += " AND source = {s:String}"
            params["s"] = q.source
        if q.search:
            needle = q.search.lower()
            keys = [f"{s}:{i}" for (s, i), n in self.latest_names(q.tenant).items()
                    if needle in n.lower()]  # fmt: skip
            where += " AND concat(toString(source), ':', source_id) IN {k:Array(String)}"
            params["k"] = keys
        return where, params

    _SUMS = (
        "count(), countIf(NOT priced), sum(input_tokens), sum(output_tokens),"
        " sum(cache_creation_input_tokens), sum(cache_read_input_tokens), sum(cost_usd)"
    )

    def summary(self, q: Query) -> tuple[Any, ...]:
        where, params = self._where(q)
        sql = f"SELECT {self._SUMS} FROM usage_events WHERE {where}"
        return tuple(self.client.query(sql, parameters=params).result_rows[0])

    def by_source(self, q: Query) -> dict[str, tuple[Any, ...]]:
        where, params = self._where(q)
        sql = f"SELECT toString(source), {self._SUMS} FROM usage_events WHERE {where} GROUP BY 1"
        return {r[0]: tuple(r[1:]) for r in self.client.query(sql, parameters=params).result_rows}

    _MODEL_SUMS = f"{_SUMS}, sum(web_search_requests), sum(tool_cost_usd)"

    def by_model(self, q: Query) -> list[tuple[Any, ...]]:
        """(model, price_tier, calls, unpriced, 4 token sums, cost, searches, tool cost)."""
        where, params = self._where(q)
        sql = (
            f"SELECT model, price_tier, {self._MODEL_SUMS} FROM usage_events WHERE {where}"
            " GROUP BY model, price_tier ORDER BY sum(cost_usd) DESC, count() DESC, model,"
            " price_tier"
        )
        return [tuple(r) for r in self.client.query(sql, parameters=params).result_rows]

    def per_model(self, q: Query) -> list[tuple[Any, ...]]:
        """(model, calls, unpriced, 4 token sums, cost, searches, tool cost), most cost first."""
        where, params = self._where(q)
        sql = (
            f"SELECT model, {self._MODEL_SUMS} FROM usage_events WHERE {where}"
            " GROUP BY model ORDER BY sum(cost_usd) DESC, count() DESC, model"
        )
        return [tuple(r) for r in self.client.query(sql, parameters=params).result_rows]

    def unpriced_models(self, q: Query) -> list[tuple[str, int]]:
        where, params = self._where(q)
        sql = (
            f"SELECT model, countIf(NOT priced) AS n FROM usage_events WHERE {where}"
            " GROUP BY model HAVING n > 0 ORDER BY n DESC, model"
        )
        return [(str(m), int(n)) for m, n in self.client.query(sql, parameters=params).result_rows]

    def timeseries(self, q: Query, tz: str, granularity: str) -> dict[str, tuple[Any, ...]]:
        """Non-empty local buckets keyed like :func:`bucket_key` of the API's bucket_start."""
        where, params = self._where(q)
        params["tz"] = tz
        if granularity == "hour":
            key = (
                "concat(formatDateTime(occurred_at, '%Y-%m-%dT%H', {tz:String}), ' ',"
                " toString(timeZoneOffset(toTimeZone(occurred_at, {tz:String}))))"
            )
        else:
            key = "toString(toDate(occurred_at, {tz:String}))"
        sql = f"SELECT {key} AS k, {self._SUMS} FROM usage_events WHERE {where} GROUP BY k"
        return {r[0]: tuple(r[1:]) for r in self.client.query(sql, parameters=params).result_rows}

    def top(self, q: Query, by: str, limit: int) -> list[tuple[Any, ...]]:
        where, params = self._where(q)
        metric = (
            "sum(cost_usd)"
            if by == "cost"
            else "sum(input_tokens + output_tokens + cache_creation_input_tokens"
            " + cache_read_input_tokens)"
        )
        sql = (
            f"SELECT toString(source), source_id, {self._SUMS} FROM usage_events WHERE {where}"
            f" GROUP BY source, source_id ORDER BY {metric} DESC, source, source_id"
            f" LIMIT {int(limit)}"
        )
        return [tuple(r) for r in self.client.query(sql, parameters=params).result_rows]

    def records(self, q: Query, offset: int, limit: int) -> tuple[list[str], int]:
        where, params = self._where(q)
        ids = self.client.query(
            f"SELECT toString(event_id) FROM usage_events WHERE {where}"
            f" ORDER BY occurred_at DESC, event_id DESC LIMIT {int(limit)} OFFSET {int(offset)}",
            parameters=params,
        ).result_rows
        total = self.client.query(
            f"SELECT count() FROM usage_events WHERE {where}", parameters=params
        ).result_rows[0][0]
        return [r[0] for r in ids], int(total)


def bucket_key(bucket_start: str, granularity: str) -> str:
    """The oracle's key for an API ``bucket_start`` (local wall clock + UTC offset)."""
    local = datetime.fromisoformat(bucket_start)
    if granularity == "day":
        return local.date().isoformat()
    offset = local.utcoffset()
    assert offset is not None
    return f"{local:%Y-%m-%dT%H} {int(offset.total_seconds())}"


def api_totals(item: dict[str, Any], cost_field: str = "cost_usd") -> tuple[Any, ...]:
    """The API's numbers in the oracle's order (unpriced is None where not returned)."""
    return (
        item["calls"],
        item.get("unpriced_calls"),
        item["input_tokens"],
        item["output_tokens"],
        item["cache_creation_input_tokens"],
        item["cache_read_input_tokens"],
        Decimal(item[cost_field]),
    )


def api_model_totals(item: dict[str, Any]) -> tuple[Any, ...]:
    """A by-model item's numbers in the order of :meth:`BruteForce.by_model` (after keys)."""
    return (*api_totals(item), item["web_search_requests"], Decimal(item["tool_cost_usd"]))


def oracle_model_totals(row: Sequence[Any]) -> tuple[Any, ...]:
    *base, searches, tool = row
    return (*oracle_totals(base), int(searches), Decimal(tool))


def oracle_totals(row: Sequence[Any], *, unpriced: bool = True) -> tuple[Any, ...]:
    calls, unpriced_calls, *rest, cost = row
    return (int(calls), int(unpriced_calls) if unpriced else None, *map(int, rest),
            Decimal(cost))  # fmt: skip


def iso_ms(value: int) -> str:
    moment = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=value)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def windows_in_data() -> Iterator[tuple[int, int]]:
    """A few fixed windows over the data (used by non-property tests)."""
    yield ms(START), ms(END)
    yield ms(START + timedelta(days=3, minutes=7)), ms(START + timedelta(days=10, seconds=1))


def test_oracle_matches_python_sums(migrated: Any) -> None:
    """The oracle itself is right: its sums equal Python's over the generated rows."""
    from llm_usage.clickhouse import connect

    client = connect(migrated)
    rows = generate("t-oracle", 300, seed=7)
    insert(client, rows)
    q = Query("t-oracle", ms(START), ms(END))
    got = BruteForce(client).summary(q)
    assert got[0] == len(rows)
    assert got[2] == sum(r[7] for r in rows)
    assert got[6] == sum((r[11] for r in rows), Decimal(0))
    chat = BruteForce(client).by_source(Query("t-oracle", ms(START), ms(END), source="chat"))
    assert chat["chat"][0] == sum(1 for r in rows if r[3] == "chat")
    by_model = BruteForce(client).by_model(q)
    assert {r[1] for r in by_model} == set(TIERS), "the data has every price tier"
    calls = {(r[COLUMNS.index("service_tier")], r[COLUMNS.index("speed")]) for r in rows}
    assert calls == {call for tier in TIERS for call in CALLS_OF_TIER[tier]}
    assert {tier_of(r) for r in rows if not r[12]} == set(TIERS), "unpriced calls have tiers"
    # ClickHouse's price_tier and token_cost_usd are the Python ones
    sql = "SELECT event_id, price_tier, token_cost_usd FROM usage_events"
    stored = {e: (t, c) for e, t, c in client.query(sql).result_rows}
    assert stored == {r[0]: (tier_of(r), r[11] - r[-1]) for r in rows}
    assert sum(r[10] for r in by_model) == sum(r[-1] for r in rows) > 0, "tool costs"
    unpriced = BruteForce(client).unpriced_models(q)
    assert {m for m, _ in unpriced} >= set(UNKNOWN_MODELS)
    assert sum(n for _, n in unpriced) == sum(1 for r in rows if not r[12])
