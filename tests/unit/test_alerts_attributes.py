"""Budgets and spike alerts per attribute value (user, customer, ...), without ClickHouse:
the settings that switch detection on per key, the budget scope and its summary filter, the
API's validation, and the evaluator's judgement over a store that answers from memory."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from pydantic import ValidationError

from llm_usage.settings import Settings
from query_api.alerts_api import BudgetIn
from query_api.db import ClickHouse
from query_api.repository import Filters
from stream_processor.alerts.budgets import Budget, Period, budget_filters
from stream_processor.alerts.evaluator import Evaluator, attribute_spike_id, spike_id
from stream_processor.alerts.spikes import HOUR, HourUsage
from stream_processor.alerts.store import Alert

T0 = datetime(2026, 11, 20, tzinfo=UTC)
NOW = T0 + timedelta(days=8, hours=12, minutes=30)  # the spike hour below is complete


# --- settings -----------------------------------------------------------------------------
def test_spike_detection_watches_user_and_customer_by_default_and_any_valid_key() -> None:
    assert Settings().spike_attribute_keys == ("user", "customer")
    assert Settings(alert_spike_attribute_keys=" feature,user ,,user").spike_attribute_keys == (
        "feature",
        "user",
    )
    assert Settings(alert_spike_attribute_keys="").spike_attribute_keys == ()
    with pytest.raises(ValidationError, match="no attribute key"):
        Settings(alert_spike_attribute_keys="user,End-User")


# --- budgets ------------------------------------------------------------------------------
def _budget(**fields: Any) -> Budget:
    values: dict[str, Any] = {
        "tenant_id": "t",
        "budget_id": "b1",
        "name": "",
        "source": "",
        "source_id": "",
        "period": Period.DAY,
        "time_zone": "UTC",
        "limit_usd": Decimal(10),
        "thresholds": (50, 100),
        "hard": False,
        "created_at": T0,
        "updated_at": T0,
        **fields,
    }
    return Budget(**values)


def test_an_attribute_budget_is_the_summary_filtered_by_that_value() -> None:
    user = _budget(attr_key="user", attr_value="u-17")
    assert user.scope == "attribute"
    assert budget_filters(user) == Filters(tenant="t", attributes=(("user", "u-17"),))
    chat_user = _budget(source="chat", attr_key="user", attr_value="u-17")
    assert chat_user.scope == "attribute"
    assert budget_filters(chat_user) == Filters(
        tenant="t", source="chat", attributes=(("user", "u-17"),)
    )
    assert budget_filters(_budget()) == Filters(tenant="t")  # the others are as they were
    assert _budget(source="agent", source_id="a1").scope == "entity"


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"attr_key": "User", "attr_value": "u1"}, "no attribute key"),
        ({"attr_key": "1user", "attr_value": "u1"}, "no attribute key"),
        ({"attr_key": "u" * 65, "attr_value": "u1"}, "at most 64"),
        ({"attr_key": "user", "attr_value": ""}, "at least 1"),
        ({"attr_key": "user", "attr_value": "x" * 257}, "at most 256"),
        ({"attr_key": "user"}, "go together"),
        ({"attr_value": "u1"}, "go together"),
        (
            {"attr_key": "user", "attr_value": "u1", "source": "chat", "source_id": "c1"},
            "leave out source_id",
        ),
        ({"attr_key": "user", "attr_value": "u1", "hard": True}, "cannot be hard"),
    ],
)
def test_the_api_refuses_a_bad_attribute_scope_with_a_reason(
    body: dict[str, Any], reason: str
) -> None:
    with pytest.raises(ValidationError, match=reason):
        BudgetIn.model_validate({"period": "day", "limit_usd": "5", **body})


def test_the_api_takes_an_attribute_scope_alone_or_within_a_source() -> None:
    body = BudgetIn.model_validate(
        {"period": "day", "limit_usd": "5", "attr_key": "customer", "attr_value": "Acme, Inc. ü"}
    )
    assert (body.attr_key, body.attr_value) == ("customer", "Acme, Inc. ü")
    within = BudgetIn.model_validate(
        {
            "period": "day",
            "limit_usd": "5",
            "source": "chat",
            "attr_key": "a.b_c",
            "attr_value": "1",
        }
    )
    assert within.source == "chat"


# --- spikes -------------------------------------------------------------------------------
Rows = list[tuple[str, str, datetime, Decimal, int]]
Calls = list[tuple[datetime, str, str, dict[str, str]]]  # hour, source, source_id, attributes


class MemoryStore:
    """What the evaluator reads and writes, from lists: entity rows (source, source_id,
    hour, cost, calls) and attribute rows (key, value, hour, cost, calls) of one tenant,
    and which entity's calls carry which attributes in which hour."""

    def __init__(self, entities: Rows, attributes: Rows, calls: Calls | None = None) -> None:
        self.entities = entities
        self.attributes = attributes
        self.calls = calls or []
        self.stored: dict[str, Alert] = {}
        self.asked_values: list[tuple[str, str]] = []
        self.asked_members: list[tuple[str, str, str, tuple[datetime, ...]]] = []

    def changed_hours(self, since: datetime) -> list[tuple[str, datetime, datetime]]:
        hours = sorted({r[2] for r in self.entities})
        return [("t", hour, NOW) for hour in hours]

    def open_spikes(self) -> list[tuple[str, datetime]]:
        return []

    def hourly(self, tenant: str, start: datetime, end: datetime) -> Rows:
        return [r for r in self.entities if start <= r[2] < end]

    def attribute_hourly(
        self,
        tenant: str,
        keys: list[str],
        start: datetime,
        end: datetime,
        judged: list[datetime],
        floor: Decimal,
    ) -> Rows:
        spent = {(k, v) for k, v, h, cost, _ in self.attributes if h in judged and cost >= floor}
        wanted = {(k, v) for k, v in spent if k in keys}
        self.asked_values = sorted(wanted)
        return [r for r in self.attributes if (r[0], r[1]) in wanted and start <= r[2] < end]

    def entities_with(
        self, tenant: str, key: str, value: str, hours: list[datetime]
    ) -> set[tuple[datetime, str, str]]:
        self.asked_members.append(("entities", key, value, tuple(hours)))
        return {(h, s, sid) for h, s, sid, a in self.calls if h in hours and a.get(key) == value}

    def entity_hours(
        self, tenant: str, entities: list[tuple[datetime, str, str]]
    ) -> dict[tuple[datetime, str, str], HourUsage]:
        wanted = set(entities)
        return {
            (h, s, i): HourUsage(Decimal(cost), int(calls))
            for s, i, h, cost, calls in self.entities
            if (h, s, i) in wanted
        }

    def values_with(
        self, tenant: str, key: str, value: str, others: list[str], hours: list[datetime]
    ) -> set[tuple[datetime, str, str]]:
        self.asked_members.append(("values", key, value, tuple(hours)))
        return {
            (h, k, a[k])
            for h, _, _, a in self.calls
            if h in hours and a.get(key) == value
            for k in others
            if k in a
        }

    def event_watermark(self, tenant: str) -> datetime:
        return NOW

    def names(self, tenant: str, entities: list[tuple[str, str]]) -> dict[tuple[str, str], str]:
        return {}

    def known_alerts(self, tenant: str, ids: list[str]) -> dict[str, Alert]:
        return {i: self.stored[i] for i in ids if i in self.stored}

    def insert_alerts(self, alerts: list[Alert]) -> None:
        self.stored |= {a.alert_id: a for a in alerts}

    def budgets(self) -> list[Budget]:
        return []


def _week(
    per_hour: Callable[[datetime], list[tuple[str, str, str, Decimal, int]]],
) -> tuple[Rows, Rows, Calls]:
    """Eight days and a half of hours; ``per_hour`` gives each hour's calls as (conversation,
    user, customer, cost, calls); returns the entity and attribute rows and the calls."""
    entities: dict[tuple[str, str, datetime], tuple[Decimal, int]] = {}
    attributes: dict[tuple[str, str, datetime], tuple[Decimal, int]] = {}
    carried: Calls = []

    def add(into: dict[Any, tuple[Decimal, int]], key: Any, cost: Decimal, calls: int) -> None:
        old = into.get(key, (Decimal(0), 0))
        into[key] = (old[0] + cost, old[1] + calls)

    hour = T0
    while hour < NOW - HOUR:
        for conversation, user, customer, cost, calls in per_hour(hour):
            add(entities, ("chat", conversation, hour), cost, calls)
            add(attributes, ("user", user, hour), cost, calls)
            add(attributes, ("customer", customer, hour), cost, calls)
            carried.append((hour, "chat", conversation, {"user": user, "customer": customer}))
        hour += HOUR
    return (
        [(a, b, h, c, n) for (a, b, h), (c, n) in entities.items()],
        [(a, b, h, c, n) for (a, b, h), (c, n) in attributes.items()],
        carried,
    )


SPIKE = T0 + timedelta(days=8, hours=9)
USERS = [f"u{i}" for i in range(6)]


def _steady(hour: datetime) -> list[tuple[str, str, str, Decimal, int]]:
    """Six users, each in a conversation of their own, $1 an hour in 5 calls; two customers,
    each also with a service user of $20 an hour."""
    users = [(f"conv-{u}", u, f"c{i % 2}", Decimal("1"), 5) for i, u in enumerate(USERS)]
    return users + [(f"bulk-{c}", f"svc-{c}", c, Decimal(20), 50) for c in ("c0", "c1")]


def _evaluator(store: MemoryStore, **settings: Any) -> Evaluator:
    evaluator = Evaluator(
        Settings(**settings), ClickHouse(Settings()), clock=lambda: NOW.timestamp()
    )
    evaluator.store = store  # type: ignore[assignment]
    return evaluator


def test_a_user_spending_over_new_conversations_raises_one_alert_naming_the_user() -> None:
    """u3 opens 12 new conversations in one hour, $1 each: no conversation has a normal
    yet, so only u3's own series (and the tenant's, which u3 explains) shows it."""

    def calls(hour: datetime) -> list[tuple[str, str, str, Decimal, int]]:
        burst = [(f"new-{n}", "u3", "c1", Decimal("1"), 3) for n in range(12)]
        return _steady(hour) + (burst if hour == SPIKE else [])

    store = MemoryStore(*_week(calls))
    evaluator = _evaluator(store)
    raised = evaluator.tick()
    assert [(a.kind, a.scope, a.attr_key, a.attr_value, a.window_start) for a in raised] == [
        ("spike_started", "attribute", "user", "u3", SPIKE),
        ("spike_ended", "attribute", "user", "u3", SPIKE),
    ], [a.message for a in raised]
    started = raised[0]
    assert started.alert_id == attribute_spike_id("t", "user", "u3", SPIKE)
    assert started.alert_id != spike_id("t", "user", "u3", SPIKE)
    assert started.observed_cost_usd == Decimal(13) and started.baseline_cost_usd == Decimal(1)
    assert "user 'u3'" in started.message
    wire = started.as_json()  # the alerts topic and webhook payloads
    assert (wire["attr_key"], wire["attr_value"], wire["scope"]) == ("user", "u3", "attribute")
    # only the values that reached the floor in a judged hour were read (here: every one of
    # the steady week's hours is judged, and none of them reaches $2 for a user)
    assert ("user", "u0") not in store.asked_values
    # its customer c1 ($23 a normal hour, $35 now) and the tenant are not far from normal
    assert evaluator.tick() == [], "judged again: nothing new"


def test_customer_key_alerts_when_watched_and_not_when_switched_off() -> None:
    def calls(hour: datetime) -> list[tuple[str, str, str, Decimal, int]]:
        burst = [(f"new-{n}", f"x{n}", "c1", Decimal(10), 3) for n in range(12)]
        return _steady(hour) + (burst if hour == SPIKE else [])  # 12 new users of c1

    raised = _evaluator(MemoryStore(*_week(calls))).tick()
    assert {(a.attr_key, a.attr_value) for a in raised} == {("customer", "c1")}
    off = _evaluator(MemoryStore(*_week(calls)), alert_spike_attribute_keys="user").tick()
    assert [(a.scope, a.source_id) for a in off if a.kind == "spike_started"] == [("tenant", "")]


def test_a_user_spike_one_conversation_explains_is_that_conversations_alert() -> None:
    def calls(hour: datetime) -> list[tuple[str, str, str, Decimal, int]]:
        if hour != SPIKE:
            return _steady(hour)
        return [c if c[1] != "u3" else (c[0], "u3", c[2], Decimal(12), 40) for c in _steady(hour)]

    raised = _evaluator(MemoryStore(*_week(calls))).tick()
    started = [a for a in raised if a.kind == "spike_started"]
    assert [(a.scope, a.source_id, a.attr_key) for a in started] == [("entity", "conv-u3", "")]


def test_steady_users_raise_nothing() -> None:
    assert _evaluator(MemoryStore(*_week(_steady))).tick() == []


def test_a_customer_spike_its_user_explains_is_the_users_alert_earlier_keys_first() -> None:
    def calls(hour: datetime) -> list[tuple[str, str, str, Decimal, int]]:
        burst = [(f"new-{n}", "u3", "c1", Decimal(5), 3) for n in range(12)]
        return _steady(hour) + (burst if hour == SPIKE else [])  # c1: $23 -> $83 too

    def started(**settings: Any) -> list[tuple[str, str]]:
        raised = _evaluator(MemoryStore(*_week(calls)), **settings).tick()
        return [(a.attr_key, a.attr_value) for a in raised if a.kind == "spike_started"]

    assert started() == [("user", "u3")]
    assert started(alert_spike_attribute_keys="customer") == [("customer", "c1")]
    assert started(alert_spike_attribute_keys="customer,user") == [("customer", "c1")]
    # unwatched, nobody alerts: the tenant's hour ($106 against $46) is not three times normal
    assert started(alert_spike_attribute_keys="") == []


def test_an_anomaly_elsewhere_in_the_tenant_does_not_hide_a_users_spike() -> None:
    """The reviewer's hour: u0's own conversation jumps from $1 to $12 and, separately, u3
    opens 12 new conversations at $1 each. conv-u0 explains u0's spike (its calls carry
    u0), not u3's: u3's spend is spread over new chats that only u3's series shows."""

    def calls(hour: datetime) -> list[tuple[str, str, str, Decimal, int]]:
        if hour != SPIKE:
            return _steady(hour)
        jumped = [c if c[1] != "u0" else (c[0], "u0", c[2], Decimal(12), 40) for c in _steady(hour)]
        return jumped + [(f"new-{n}", "u3", "c1", Decimal("1"), 3) for n in range(12)]

    store = MemoryStore(*_week(calls))
    raised = _evaluator(store).tick()
    started = [a for a in raised if a.kind == "spike_started"]
    assert sorted((a.scope, a.source_id, a.attr_key, a.attr_value) for a in started) == [
        ("attribute", "", "user", "u3"),
        ("entity", "conv-u0", "", ""),
    ], [a.message for a in started]
    u3 = next(a for a in started if a.scope == "attribute")
    assert u3.window_start == SPIKE and u3.observed_cost_usd == Decimal(13)
    # membership was read for the values that spiked only, and only for the spike's hour
    assert {(what, k, v) for what, k, v, _ in store.asked_members} <= {
        ("entities", "user", "u0"),
        ("entities", "user", "u3"),
        ("entities", "customer", "c0"),
        ("entities", "customer", "c1"),
        ("values", "customer", "c0"),
        ("values", "customer", "c1"),
    }
    assert all(hours == (SPIKE,) for *_, hours in store.asked_members)


def test_a_customer_spike_another_customers_user_is_anomalous_in_still_alerts() -> None:
    """In one hour u0 (a user of c0) jumps, and c1 gains twelve new users: u0 is a value
    of an earlier key anomalous then, but none of its calls are c1's, so c1 alerts."""

    def calls(hour: datetime) -> list[tuple[str, str, str, Decimal, int]]:
        if hour != SPIKE:
            return _steady(hour)
        u0 = [(f"u0-new-{n}", "u0", "c0", Decimal("1"), 3) for n in range(12)]
        c1 = [(f"x-new-{n}", f"x{n}", "c1", Decimal(10), 3) for n in range(12)]
        return _steady(hour) + u0 + c1

    raised = _evaluator(MemoryStore(*_week(calls))).tick()
    started = [a for a in raised if a.kind == "spike_started"]
    assert sorted((a.scope, a.attr_key, a.attr_value) for a in started) == [
        ("attribute", "customer", "c1"),
        ("attribute", "user", "u0"),
    ], [a.message for a in started]
