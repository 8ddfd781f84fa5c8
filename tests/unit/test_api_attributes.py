"""``attr.`` parameters and the SQL built for them (no ClickHouse): which tables answer,
which conditions they get, and that keys and values only ever travel as bound parameters."""

from __future__ import annotations

import re
from decimal import Decimal

import pytest

from query_api.attributes import AttributeParamError, parse_by, parse_filters
from query_api.cache import SettledCache
from query_api.repository import (
    ATTRIBUTES,
    COMPACT,
    DETAILED,
    METRICS,
    MODELS,
    RAW_ONLY,
    Filters,
    Group,
    Totals,
    UsageRepository,
    _aggregate_sql,
    _breakdown_sql,
    _filter_conditions,
    _Params,
    _shape,
    _tiers_for,
    attr_group,
)
from query_api.schemas import Breakdown
from query_api.window import DAY, HOUR, MINUTE, QUARTER, Window

# A window with a whole UTC day, whole slots and unaligned (raw) edges on both sides.
START = 20_000 * DAY - 7 * QUARTER - 3 * MINUTE - 1_234
END = 20_001 * DAY + 3 * HOUR + 2 * MINUTE + 5_678
RANGES = [(START, END)]
TRICKY = "o'Brien\"; DROP TABLE usage_events; --"


def test_attr_params_are_parsed_sorted_and_other_params_ignored() -> None:
    params = [("period", "7d"), ("attr.user", "u-1"), ("attrs", "x"), ("attr.customer", TRICKY)]
    assert parse_filters(params) == (("customer", TRICKY), ("user", "u-1"))
    assert parse_filters([]) == ()
    sixteen = [(f"attr.k{i:02}", "v") for i in range(16)]
    assert len(parse_filters(sixteen)) == 16
    assert parse_filters([("attr.a.b_9", "x" * 256)]) == (("a.b_9", "x" * 256),)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ([("attr.User", "x")], "attr.User: the attribute key must match ^[a-z][a-z0-9_.]{0,63}$"),
        ([("attr.", "x")], "attr.: the attribute key must match"),
        ([("attr.1x", "x")], "must match"),
        ([("attr.a-b", "x")], "must match"),
        ([("attr." + "k" * 65, "x")], "must match"),
        ([("attr.user", "")], "attr.user: the value must be 1 to 256 characters"),
        ([("attr.user", "x" * 257)], "1 to 256 characters"),
        ([("attr.user", "a"), ("attr.user", "b")], "attr.user is given twice"),
        ([(f"attr.k{i}", "v") for i in range(17)], "at most 16 attr.<key> filters"),
    ],
)
def test_bad_attr_params_are_refused_with_a_message(
    params: list[tuple[str, str]], message: str
) -> None:
    with pytest.raises(AttributeParamError, match=re.escape(message)):
        parse_filters(params)


def test_by_is_a_source_a_model_or_an_attribute_key() -> None:
    assert parse_by("source") == ("source", None)
    assert parse_by("model") == ("model", None)
    assert parse_by("attr.prompt_version") == ("attr", "prompt_version")
    for bad in ("user", "attr.", "attr.Bad", "sources", ""):
        with pytest.raises(AttributeParamError, match="by"):
            parse_by(bad)


def _sql(filters: Filters, keys: list[str], tiers: object = COMPACT) -> tuple[str, _Params]:
    params = _Params()
    chosen = _tiers_for(filters, keys, tiers)  # type: ignore[arg-type]
    sql = _aggregate_sql(
        RANGES, filters, keys, tiers=chosen, metrics=METRICS, raw_grain=QUARTER, params=params
    )
    return sql, params


def _tables(sql: str) -> set[str]:
    return set(re.findall(r" FROM (\w+)", sql))


def _bound(sql: str, params: _Params, value: str) -> list[str]:
    """The placeholders of ``sql`` bound to ``value``."""
    return [f"{{{n}:String}}" for n, v in params.values.items() if v == value]


def test_without_attributes_nothing_changes() -> None:
    plain = Filters("t")
    assert _tiers_for(plain, [], COMPACT) is COMPACT
    assert _tiers_for(plain, ["model"], MODELS) is MODELS
    assert _tiers_for(Filters("t", search="x"), [], COMPACT) is DETAILED
    sql, _ = _sql(plain, ["source"])
    assert "attr" not in sql
    assert _tables(sql) == {"usage_api_daily", "usage_api_15m", "usage_api_models_1m",
                            "usage_events"}  # fmt: skip


def test_one_attr_filter_reads_the_attribute_rollups_and_raw_edges() -> None:
    filters = Filters("t", source="chat", attributes=(("user", TRICKY),))
    assert _tiers_for(filters, [], COMPACT) is ATTRIBUTES
    assert _tiers_for(filters, ["model", "price_tier"], MODELS) is ATTRIBUTES
    sql, params = _sql(filters, ["source"])
    assert _tables(sql) == {"usage_attributes_daily", "usage_attributes_15m", "usage_events"}
    assert TRICKY not in sql and "'user'" not in sql
    (key,) = _bound(sql, params, "user")
    (value,) = _bound(sql, params, TRICKY)
    assert sql.count(f"attr_key = {key} AND attr_value = {value}") == 2  # both rollups
    assert sql.count(f"attributes[{key}] = {value}") == 1  # the raw edges
    assert sql.count("source = {") == 3


@pytest.mark.parametrize(
    ("filters", "keys", "tiers"),
    [
        (Filters("t", attributes=(("customer", "a"), ("user", "u"))), [], COMPACT),
        (Filters("t", search="x", matches=(), attributes=(("user", "u"),)), [], COMPACT),
        (Filters("t", source_id="c1", attributes=(("user", "u"),)), ["t"], COMPACT),
        (Filters("t", attributes=(("user", "u"),)), ["source", "source_id"], DETAILED),
    ],
)
def test_what_the_rollups_cannot_answer_reads_usage_events_only(
    filters: Filters, keys: list[str], tiers: object
) -> None:
    assert _tiers_for(filters, keys, tiers) is RAW_ONLY  # type: ignore[arg-type]
    sql, params = _sql(filters, keys, tiers)
    assert _tables(sql) == {"usage_events"}
    for k, v in filters.attributes:
        (key,) = _bound(sql, params, k)
        (value,) = _bound(sql, params, v)
        assert f"attributes[{key}] = {value}" in sql


def test_a_breakdown_by_one_key_groups_its_values() -> None:
    keys = [attr_group("user")]
    sql, params = _sql(Filters("t"), keys, ATTRIBUTES)
    assert _tables(sql) == {"usage_attributes_daily", "usage_attributes_15m", "usage_events"}
    (key,) = _bound(sql, params, "user")
    assert sql.count(f"attr_key = {key}") == 2
    assert f"mapContains(attributes, {key})" in sql
    assert f"attributes[{key}] AS attr_value" in sql
    assert sql.count("GROUP BY attr_value") == 3
    # a filter on the same key still fits the rollups; on another key it does not
    same = Filters("t", attributes=(("user", "u-1"),))
    assert _tiers_for(same, keys, ATTRIBUTES) is ATTRIBUTES
    other = Filters("t", attributes=(("customer", "acme"),))
    assert _tiers_for(other, keys, ATTRIBUTES) is RAW_ONLY
    assert _tiers_for(Filters("t", search="x"), keys, ATTRIBUTES) is RAW_ONLY


def test_the_key_listing_explodes_the_map_on_raw_edges() -> None:
    sql, _ = _sql(Filters("t"), ["attr_key", "attr_value"], ATTRIBUTES)
    assert sql.count("ARRAY JOIN mapKeys(attributes) AS attr_key") == 1
    assert sql.count("GROUP BY attr_key, attr_value") == 3
    filtered = Filters("t", attributes=(("customer", "acme"),))
    assert _tiers_for(filtered, ["attr_key", "attr_value"], ATTRIBUTES) is RAW_ONLY


def test_a_rollup_without_attributes_refuses_an_attr_filter() -> None:
    filters = Filters("t", attributes=(("user", "u"),))
    with pytest.raises(ValueError, match="usage_api_15m"):
        _filter_conditions(filters, _Params(), COMPACT[QUARTER])
    two = Filters("t", attributes=(("a", "1"), ("b", "2")))
    with pytest.raises(ValueError, match="2 attributes"):
        _filter_conditions(two, _Params(), ATTRIBUTES[DAY])


def test_the_cache_key_tells_attr_filters_apart() -> None:
    a = _shape(Filters("t", attributes=(("user", "a"),)), [], ATTRIBUTES, METRICS)
    b = _shape(Filters("t", attributes=(("user", "b"),)), [], ATTRIBUTES, METRICS)
    none = _shape(Filters("t"), [], ATTRIBUTES, METRICS)
    assert len({a, b, none}) == 3
    by_user = _shape(Filters("t"), [attr_group("user")], ATTRIBUTES, METRICS)
    by_team = _shape(Filters("t"), [attr_group("team")], ATTRIBUTES, METRICS)
    assert by_user != by_team


def _totals(calls: int, cost: str) -> Totals:
    return Totals(calls=calls, input_tokens=calls * 10, cost_usd=Decimal(cost))


def test_breakdown_keeps_limit_groups_and_sums_the_rest_into_other() -> None:
    window = Window(START, END)
    groups = [
        Group("a", _totals(3, "0.5")),
        Group(None, _totals(5, "0.25")),
        Group("b", _totals(1, "0.125")),
        Group("c", _totals(2, "0.125")),
    ]
    body = Breakdown.build(window, "attr.user", 2, groups).model_dump(by_alias=True)
    assert body["total_cost_usd"] == "1.000000000000"
    assert [(g["key"], g["calls"], g["cost_usd"], g["share"]) for g in body["groups"]] == [
        ("a", 3, "0.500000000000", 0.5),
        (None, 5, "0.250000000000", 0.25),
        ("b", 1, "0.125000000000", 0.125),  # the null group does not count against limit
    ]
    assert body["groups"][0]["input_tokens"] == 30
    assert set(body["groups"][0]) == {"key", "calls", "input_tokens", "output_tokens",
                                      "cache_read_tokens", "cache_write_tokens", "cost_usd",
                                      "share"}  # fmt: skip
    other = body["other"]
    assert (other["key"], other["groups"], other["calls"], other["cost_usd"], other["share"]) == (
        None, 1, 2, "0.125000000000", 0.125
    )  # fmt: skip
    whole = Breakdown.build(window, "source", 20, groups).model_dump(by_alias=True)
    assert whole["other"] is None and len(whole["groups"]) == 4
    free = Breakdown.build(window, "model", 20, [Group("m", _totals(4, "0"))])
    assert free.groups[0].share == 0.0 and free.total_cost_usd == "0.000000000000"


def test_the_null_group_is_always_listed_never_cut_at_limit_nor_summed_into_other() -> None:
    window = Window(START, END)
    groups = [
        Group("a", _totals(3, "0.5")),
        Group("b", _totals(2, "0.25")),
        Group("c", _totals(2, "0.125")),
        Group(None, _totals(7, "0.0625")),  # sorts last: cheapest
        Group("d", _totals(1, "0.0625")),
    ]
    for limit in (1, 2, 3, 4, 1000):
        body = Breakdown.build(window, "attr.user", limit, groups)
        listed = [g.key for g in body.groups]
        valued = ["a", "b", "c", "d"][:limit]
        assert listed == [k for k in ["a", "b", "c", None, "d"] if k is None or k in valued]
        assert listed.count(None) == 1, limit
        if limit >= 4:
            assert body.other is None
        else:
            assert body.other is not None and body.other.groups == 4 - limit  # values only
            assert body.other.calls == sum(g.totals.calls for g in groups[limit:] if g.key)
        calls = sum(g.calls for g in body.groups) + (body.other.calls if body.other else 0)
        assert calls == 15
    alone = Breakdown.build(window, "attr.user", 1, [Group(None, _totals(2, "1"))])
    assert [g.key for g in alone.groups] == [None] and alone.other is None


def test_a_breakdown_by_attribute_reads_its_groups_and_the_whole_in_one_statement() -> None:
    """The values' groups and the window's whole (whose difference is the null group) are
    parts of one UNION ALL, so one read: never two queries between which an insert lands."""
    params = _Params()
    filters = Filters("t", source="chat", attributes=(("user", TRICKY),))
    keys = [attr_group("user")]
    sql = _breakdown_sql(
        RANGES, filters, "user", groups=_tiers_for(filters, keys, ATTRIBUTES),
        whole=_tiers_for(filters, [], COMPACT), metrics=METRICS, params=params,
    )  # fmt: skip
    assert sql.startswith("SELECT whole, attr_value, sum(x_calls) AS calls")
    assert sql.endswith(" GROUP BY whole, attr_value")
    assert sql.count("SELECT whole") == 1  # one outer query over every part
    assert sql.count("0 AS whole, attr_value") == 2 and sql.count("0 AS whole, attributes[") == 1
    assert sql.count("1 AS whole, '' AS no_value") == 3  # daily, 15m and raw edges
    assert TRICKY not in sql and "'user'" not in sql and "'chat'" not in sql
    (key,) = _bound(sql, params, "user")
    (value,) = _bound(sql, params, TRICKY)
    assert sql.count(f"attr_key = {key} AND attr_value = {value}") == 4  # both halves
    plain = _Params()
    no_filter = _breakdown_sql(
        RANGES, Filters("t"), "user", groups=ATTRIBUTES, whole=COMPACT, metrics=METRICS,
        params=plain,
    )  # fmt: skip
    assert _tables(no_filter) == {"usage_attributes_daily", "usage_attributes_15m",
                                  "usage_api_daily", "usage_api_15m", "usage_api_models_1m",
                                  "usage_events"}  # fmt: skip
    assert no_filter.count("SELECT whole") == 1


class _RecordingDB:
    """A ClickHouse stand-in: records every statement, answers with canned rows."""

    def __init__(self, rows: list[tuple[object, ...]]) -> None:
        self.answer = rows
        self.sql: list[str] = []

    def rows(self, sql: str, params: dict[str, object]) -> list[tuple[object, ...]]:
        self.sql.append(sql)
        return self.answer


def test_the_null_group_is_the_whole_minus_the_groups_of_the_same_statement() -> None:
    zeros = [0] * (len(METRICS) - 2)
    db = _RecordingDB([
        (0, "u-1", 3, *zeros, Decimal("0.3")),
        (0, "u-2", 1, *zeros, Decimal("0.1")),
        (1, "", 10, *zeros, Decimal("1.0")),
    ])  # fmt: skip
    repo = UsageRepository(db)  # type: ignore[arg-type]
    try:
        groups = repo.breakdown(Window(START, END), Filters("t"), "attr", "user")
    finally:
        repo.close()
    assert len(db.sql) == 1 and "1 AS whole" in db.sql[0]  # one statement, nothing else
    assert [(g.key, g.totals.calls, g.totals.cost_usd) for g in groups] == [
        (None, 6, Decimal("0.6")),
        ("u-1", 3, Decimal("0.3")),
        ("u-2", 1, Decimal("0.1")),
    ]


def test_settled_hours_of_a_breakdown_are_cached_apart_from_the_plain_queries() -> None:
    zeros = [0] * (len(METRICS) - 2)

    class Settled(_RecordingDB):
        def rows(self, sql: str, params: dict[str, object]) -> list[tuple[object, ...]]:
            if "ingest_activity" in sql:  # the version: old, settled writes
                return [(7, 3, 0, 10**13)]
            return super().rows(sql, params)

    db = Settled([(0, "u-1", 3, *zeros, Decimal("0.3")), (1, "", 4, *zeros, Decimal("0.4"))])
    cache = SettledCache(10_000)
    now = (END + 3 * HOUR) / 1000
    repo = UsageRepository(db, cache=cache, clock=lambda: now)  # type: ignore[arg-type]
    try:
        first = repo.breakdown(Window(START, END), Filters("t"), "attr", "user")
        statements = len(db.sql)
        again = repo.breakdown(Window(START, END), Filters("t"), "attr", "user")
        assert len(db.sql) == statements + 1  # only the recent part is read again
        assert all("1 AS whole" in sql for sql in db.sql)
        repo._grouped(Window(START, END), Filters("t"), [attr_group("user")], tiers=ATTRIBUTES)
    finally:
        repo.close()
    assert first == again
    kinds = sorted(str(key[0]) for key in cache._entries)  # type: ignore[index]
    assert kinds == ["breakdown", "grouped"], "the plain query does not reuse the entry"
