"""Every SQL statement of budgets, alerts, webhooks and their deliveries; bound parameters
only. Used by the alerter and by the API's routers alike (one store, one truth)."""

from __future__ import annotations

import secrets
import time
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from query_api.keys import Rows
from stream_processor.alerts.budgets import Budget, Period
from stream_processor.alerts.spikes import HourUsage

TS = "DateTime64(3, 'UTC')"
TOPIC_TARGET = "kafka"  # alert_deliveries.webhook_id of the alerts topic
MONEY = "Decimal(38, 12)"
HOUR = timedelta(hours=1)


def _version() -> int:
    """Versions of config rows: microseconds since the epoch (later writes win)."""
    return time.time_ns() // 1000


def new_id() -> str:
    return secrets.token_hex(8)


@dataclass(frozen=True)
class Alert:
    """One breach: a spike that started or ended, or a budget threshold crossed."""

    tenant_id: str
    alert_id: str
    kind: str  # spike_started, spike_ended, budget_threshold
    scope: str  # tenant, source, entity, attribute
    source: str
    source_id: str
    source_name: str
    budget_id: str
    threshold_pct: int
    window_start: datetime
    window_end: datetime
    observed_cost_usd: Decimal
    observed_calls: int
    baseline_cost_usd: Decimal
    baseline_calls: float
    message: str
    raised_at: datetime
    cleared_at: datetime | None = None
    version: int = 1
    attr_key: str = ""  # scope attribute: the key and value the alert is about
    attr_value: str = ""

    def as_json(self) -> dict[str, Any]:
        """The wire form (Kafka topic, webhooks, API): money as strings, times ISO 8601."""
        out: dict[str, Any] = {}
        for key, value in asdict(self).items():
            if isinstance(value, datetime):
                value = value.astimezone(UTC).isoformat().replace("+00:00", "Z")
            elif isinstance(value, Decimal):
                value = format(value.normalize(), "f")
            out[key] = value
        return out


@dataclass(frozen=True)
class Webhook:
    tenant_id: str
    webhook_id: str
    url: str
    secret: str
    created_at: datetime


_ALERT_COLUMNS = (
    "tenant_id, alert_id, kind, scope, source, source_id, source_name, budget_id,"
    " threshold_pct, window_start, window_end, observed_cost_usd, observed_calls,"
    " baseline_cost_usd, baseline_calls, message, raised_at, cleared_at, version,"
    " attr_key, attr_value"
)
_ALERT_TYPES = {
    "tenant_id": "String",
    "alert_id": "String",
    "kind": "String",
    "scope": "String",
    "source": "String",
    "source_id": "String",
    "source_name": "String",
    "budget_id": "String",
    "threshold_pct": "UInt16",
    "window_start": TS,
    "window_end": TS,
    "observed_cost_usd": MONEY,
    "observed_calls": "UInt64",
    "baseline_cost_usd": MONEY,
    "baseline_calls": "Float64",
    "message": "String",
    "raised_at": TS,
    "cleared_at": f"Nullable({TS})",
    "version": "UInt64",
    "attr_key": "String",
    "attr_value": "String",
}
_BUDGET_COLUMNS = (
    "tenant_id, budget_id, name, source, source_id, period, time_zone, limit_usd, thresholds,"
    " hard, created_at, updated_at, attr_key, attr_value"
)


def _alert_of(row: Any) -> Alert:
    v = list(row)
    return Alert(
        tenant_id=v[0],
        alert_id=v[1],
        kind=v[2],
        scope=v[3],
        source=v[4],
        source_id=v[5],
        source_name=v[6],
        budget_id=v[7],
        threshold_pct=int(v[8]),
        window_start=_utc(v[9]),
        window_end=_utc(v[10]),
        observed_cost_usd=Decimal(v[11]),
        observed_calls=int(v[12]),
        baseline_cost_usd=Decimal(v[13]),
        baseline_calls=float(v[14]),
        message=v[15],
        raised_at=_utc(v[16]),
        cleared_at=_utc(v[17]) if v[17] is not None else None,
        version=int(v[18]),
        attr_key=v[19],
        attr_value=v[20],
    )


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _budget_of(row: Any) -> Budget:
    return Budget(
        tenant_id=row[0],
        budget_id=row[1],
        name=row[2],
        source=row[3],
        source_id=row[4],
        period=Period(row[5]),
        time_zone=row[6],
        limit_usd=Decimal(row[7]),
        thresholds=tuple(int(t) for t in row[8]),
        hard=bool(row[9]),
        created_at=_utc(row[10]),
        updated_at=_utc(row[11]),
        attr_key=row[12],
        attr_value=row[13],
    )


class AlertStore:
    """Budgets, alerts, webhooks and deliveries in ClickHouse."""

    def __init__(self, db: Rows) -> None:
        self.db = db

    # --- budgets ------------------------------------------------------------------------
    def budgets(self, tenant_id: str | None = None) -> list[Budget]:
        """Live budgets of ``tenant_id`` (every tenant's when None), oldest first."""
        rows = self.db.rows(
            f"SELECT {_BUDGET_COLUMNS} FROM budgets FINAL WHERE NOT deleted"
            " AND ({tenant:String} = '' OR tenant_id = {tenant:String})"
            " ORDER BY created_at, budget_id",
            {"tenant": tenant_id or ""},
        )
        return [_budget_of(row) for row in rows]

    def budget(self, tenant_id: str, budget_id: str) -> Budget | None:
        found = [b for b in self.budgets(tenant_id) if b.budget_id == budget_id]
        return found[0] if found else None

    def put_budget(self, budget: Budget, *, deleted: bool = False) -> None:
        """Write ``budget`` as its latest version (creation, change or deletion)."""
        self.db.command(
            f"INSERT INTO budgets ({_BUDGET_COLUMNS}, deleted, version) SELECT"
            " {tenant:String}, {id:String}, {name:String}, {source:String}, {sid:String},"
            " {period:String}, {tz:String}, {limit:Decimal(38, 12)}, {thresholds:Array(UInt16)},"
            f" {{hard:Bool}}, {{created:{TS}}}, {{updated:{TS}}}, {{key:String}},"
            " {value:String}, {deleted:Bool}, {version:UInt64}",
            {
                "tenant": budget.tenant_id,
                "id": budget.budget_id,
                "name": budget.name,
                "source": budget.source,
                "sid": budget.source_id,
                "period": budget.period.value,
                "tz": budget.time_zone,
                "limit": budget.limit_usd,
                "thresholds": list(budget.thresholds),
                "hard": budget.hard,
                "created": budget.created_at,
                "updated": budget.updated_at,
                "key": budget.attr_key,
                "value": budget.attr_value,
                "deleted": deleted,
                "version": _version(),
            },
        )

    # --- alerts -------------------------------------------------------------------------
    def insert_alerts(self, alerts: list[Alert]) -> None:
        for alert in alerts:
            values = asdict(alert)
            placeholders = ", ".join(f"{{{k}:{_ALERT_TYPES[k]}}}" for k in values)
            self.db.command(f"INSERT INTO alerts ({_ALERT_COLUMNS}) SELECT {placeholders}", values)

    def known_alerts(self, tenant_id: str, alert_ids: list[str]) -> dict[str, Alert]:
        """The stored (latest) versions of ``alert_ids``."""
        if not alert_ids:
            return {}
        rows = self.db.rows(
            f"SELECT {_ALERT_COLUMNS} FROM alerts FINAL WHERE tenant_id = {{tenant:String}}"
            " AND alert_id IN {ids:Array(String)}",
            {"tenant": tenant_id, "ids": alert_ids},
        )
        return {a.alert_id: a for a in map(_alert_of, rows)}

    def alerts(
        self,
        tenant_id: str,
        *,
        start: datetime | None = None,
        end: datetime | None = None,
        kind: str | None = None,
        limit: int = 100,
    ) -> list[Alert]:
        """The tenant's alerts whose window overlaps [start, end), newest window first."""
        rows = self.db.rows(
            f"SELECT {_ALERT_COLUMNS} FROM alerts FINAL WHERE tenant_id = {{tenant:String}}"
            f" AND window_end > {{start:{TS}}} AND window_start < {{end:{TS}}}"
            " AND ({kind:String} = '' OR kind = {kind:String})"
            " ORDER BY window_start DESC, raised_at DESC, alert_id LIMIT {limit:UInt32}",
            {
                "tenant": tenant_id,
                "start": start or datetime(1970, 1, 1, tzinfo=UTC),
                "end": end or datetime(2100, 1, 1, tzinfo=UTC),
                "kind": kind or "",
                "limit": limit,
            },
        )
        return [_alert_of(row) for row in rows]

    def open_budget_alerts(self, tenant_id: str, budget_id: str) -> dict[int, Alert]:
        """Rolling budgets: per threshold, the latest crossing that has not cleared."""
        rows = self.db.rows(
            f"SELECT {_ALERT_COLUMNS} FROM alerts FINAL WHERE tenant_id = {{tenant:String}}"
            " AND budget_id = {budget:String} AND kind = 'budget_threshold'"
            " AND cleared_at IS NULL ORDER BY raised_at",
            {"tenant": tenant_id, "budget": budget_id},
        )
        return {a.threshold_pct: a for a in map(_alert_of, rows)}

    def clear(self, alert: Alert, at: datetime) -> Alert:
        cleared = replace(alert, cleared_at=at, version=alert.version + 1)
        self.insert_alerts([cleared])
        return cleared

    def open_spikes(self) -> list[tuple[str, datetime]]:
        """(tenant, start hour) of spikes that started and have not ended (an ended one
        has the id of its start with ``-end``)."""
        rows = self.db.rows(
            "SELECT tenant_id, window_start FROM alerts FINAL WHERE kind = 'spike_started'"
            " AND alert_id NOT IN (SELECT substring(alert_id, 1, 32) FROM alerts"
            " WHERE kind = 'spike_ended')",
            {},
        )
        return [(str(r[0]), _utc(r[1])) for r in rows]

    # --- webhooks and deliveries -------------------------------------------------------
    def webhooks(self, tenant_id: str | None = None) -> list[Webhook]:
        rows = self.db.rows(
            "SELECT tenant_id, webhook_id, url, secret, created_at FROM webhooks FINAL"
            " WHERE NOT deleted AND ({tenant:String} = '' OR tenant_id = {tenant:String})"
            " ORDER BY created_at, webhook_id",
            {"tenant": tenant_id or ""},
        )
        return [Webhook(r[0], r[1], r[2], r[3], _utc(r[4])) for r in rows]

    def put_webhook(self, hook: Webhook, *, deleted: bool = False) -> None:
        self.db.command(
            "INSERT INTO webhooks (tenant_id, webhook_id, url, secret, created_at, deleted,"
            " version) SELECT {tenant:String}, {id:String}, {url:String}, {secret:String},"
            f" {{created:{TS}}}, {{deleted:Bool}}, {{version:UInt64}}",
            {
                "tenant": hook.tenant_id,
                "id": hook.webhook_id,
                "url": hook.url,
                "secret": hook.secret,
                "created": hook.created_at,
                "deleted": deleted,
                "version": _version(),
            },
        )

    def pending_deliveries(self, since: datetime) -> list[tuple[Alert, Webhook]]:
        """(alert version, webhook) pairs that no delivery finished: alerts raised since
        ``since`` and after the webhook was created."""
        hooks = {(h.tenant_id, h.webhook_id): h for h in self.webhooks()}
        if not hooks:
            return []
        pending = self._undelivered(since, [h.webhook_id for h in hooks.values()])
        return [
            (alert, hook)
            for alert, target in pending
            if (hook := hooks.get((alert.tenant_id, target))) is not None
            and alert.raised_at >= hook.created_at  # a new webhook gets new alerts only
        ]

    def unpublished(self, since: datetime) -> list[Alert]:
        """Alert versions raised since ``since`` not yet on the alerts topic."""
        return [alert for alert, _ in self._undelivered(since, [TOPIC_TARGET])]

    def _undelivered(self, since: datetime, targets: list[str]) -> list[tuple[Alert, str]]:
        rows = self.db.rows(
            f"SELECT {_ALERT_COLUMNS}, target FROM alerts FINAL"
            " ARRAY JOIN {targets:Array(String)} AS target"
            f" WHERE raised_at >= {{since:{TS}}}"
            " AND (tenant_id, alert_id, version, target) NOT IN"
            " (SELECT tenant_id, alert_id, alert_version, webhook_id FROM alert_deliveries"
            "  WHERE delivered OR webhook_id != {topic:String})"
            " ORDER BY raised_at, alert_id",
            {"since": since, "targets": targets, "topic": TOPIC_TARGET},
        )
        return [(_alert_of(r[:-1]), str(r[-1])) for r in rows]

    def record_delivery(
        self, alert: Alert, target: str, *, attempts: int, status: int, delivered: bool
    ) -> None:
        """The outcome of delivering ``alert`` to a webhook id or :data:`TOPIC_TARGET`."""
        self.db.command(
            "INSERT INTO alert_deliveries (tenant_id, alert_id, alert_version, webhook_id,"
            " attempts, status, delivered, finished_at) SELECT {tenant:String}, {alert:String},"
            " {version:UInt64}, {hook:String}, {attempts:UInt32}, {status:UInt16},"
            " {delivered:Bool}, now64(3)",
            {
                "tenant": alert.tenant_id,
                "alert": alert.alert_id,
                "version": alert.version,
                "hook": target,
                "attempts": attempts,
                "status": status,
                "delivered": delivered,
            },
        )

    # --- what the evaluator reads ------------------------------------------------------
    def changed_hours(self, since: datetime) -> list[tuple[str, datetime, datetime]]:
        """(tenant, hour, ingested at) of the event-time hours written to after ``since``."""
        rows = self.db.rows(
            "SELECT tenant_id, hour, max(last_ingested_at) AS ingested FROM ingest_activity"
            f" GROUP BY tenant_id, hour HAVING ingested > {{since:{TS}}} ORDER BY tenant_id, hour",
            {"since": since},
        )
        return [(str(r[0]), _utc(r[1]), _utc(r[2])) for r in rows]

    def event_watermark(self, tenant_id: str) -> datetime | None:
        """The latest event time of the tenant (hours before it count as complete)."""
        rows = self.db.rows(
            "SELECT max(last_occurred_at), count() FROM ingest_activity"
            " WHERE tenant_id = {tenant:String}",
            {"tenant": tenant_id},
        )
        return _utc(rows[0][0]) if rows and int(rows[0][1]) else None

    def hourly(
        self, tenant_id: str, start: datetime, end: datetime
    ) -> list[tuple[str, str, datetime, Decimal, int]]:
        """(source, source_id, hour, cost, calls) of every entity of the tenant in [start, end)."""
        rows = self.db.rows(
            "SELECT toString(source), source_id, hour, sum(cost_usd), sum(calls)"
            " FROM usage_hourly WHERE tenant_id = {tenant:String}"
            " AND hour >= toDateTime({start:DateTime64(3, 'UTC')}, 'UTC')"
            " AND hour < toDateTime({end:DateTime64(3, 'UTC')}, 'UTC')"
            " GROUP BY source, source_id, hour",
            {"tenant": tenant_id, "start": start, "end": end},
        )
        return [(str(r[0]), str(r[1]), _utc(r[2]), Decimal(r[3]), int(r[4])) for r in rows]

    def attribute_hourly(
        self,
        tenant_id: str,
        keys: list[str],
        start: datetime,
        end: datetime,
        judged: list[datetime],
        floor: Decimal,
    ) -> list[tuple[str, str, datetime, Decimal, int]]:
        """(key, value, hour, cost, calls) in [start, end) of the values of ``keys`` that
        spent at least ``floor`` in one of the ``judged`` hours.

        The bound of the work: an hour under the spike floor is never a spike, so only the
        values that reached it in an hour being judged need their series (a tenant with
        50,000 users judges the few that spent in the last hour, not all of them).
        """
        if not keys or not judged:
            return []
        rows = self.db.rows(
            "SELECT toString(attr_key), attr_value, toStartOfHour(slot) AS hour,"
            " sum(cost_usd), sum(calls) FROM usage_attributes_15m"
            " WHERE tenant_id = {tenant:String} AND attr_key IN {keys:Array(String)}"
            f" AND slot >= toDateTime({{start:{TS}}}, 'UTC')"
            f" AND slot < toDateTime({{end:{TS}}}, 'UTC')"
            " AND (attr_key, attr_value) IN ("
            "  SELECT attr_key, attr_value FROM usage_attributes_15m"
            "  WHERE tenant_id = {tenant:String} AND attr_key IN {keys:Array(String)}"
            f"  AND slot >= toDateTime({{first:{TS}}}, 'UTC')"
            f"  AND slot < toDateTime({{last:{TS}}}, 'UTC')"
            "  AND toStartOfHour(slot) IN {hours:Array(DateTime('UTC'))}"
            "  GROUP BY attr_key, attr_value, toStartOfHour(slot)"
            f"  HAVING sum(cost_usd) >= {{floor:{MONEY}}})"
            " GROUP BY attr_key, attr_value, hour",
            {
                "tenant": tenant_id,
                "keys": keys,
                "start": start,
                "end": end,
                "first": min(judged),
                "last": max(judged) + HOUR,
                "hours": sorted(judged),
                "floor": floor,
            },
        )
        return [(str(r[0]), str(r[1]), _utc(r[2]), Decimal(r[3]), int(r[4])) for r in rows]

    def entities_with(
        self, tenant_id: str, key: str, value: str, hours: list[datetime]
    ) -> set[tuple[datetime, str, str]]:
        """(hour, source, source_id) of the entities whose calls in one of ``hours`` carry
        ``key`` = ``value``: what may explain that value's spike in that hour.

        Asked only for a value that spiked, over its spike's hours, from the raw calls (no
        rollup keeps entity and attribute together): the tenant's sort key and the bloom
        filter on the attribute values keep the read to those hours and that value.
        """
        if not hours:
            return set()
        rows = self.db.rows(
            "SELECT DISTINCT toStartOfHour(toDateTime(occurred_at, 'UTC')) AS hour,"
            " toString(source), source_id FROM usage_events"
            " WHERE tenant_id = {tenant:String}"
            f" AND occurred_at >= {{first:{TS}}} AND occurred_at < {{last:{TS}}}"
            " AND hour IN {hours:Array(DateTime('UTC'))}"
            " AND attributes[{key:String}] = {value:String}",
            {
                "tenant": tenant_id,
                "first": min(hours),
                "last": max(hours) + HOUR,
                "hours": sorted(hours),
                "key": key,
                "value": value,
            },
        )
        return {(_utc(r[0]), str(r[1]), str(r[2])) for r in rows}

    def entity_hours(
        self, tenant_id: str, entities: list[tuple[datetime, str, str]]
    ) -> dict[tuple[datetime, str, str], HourUsage]:
        """Cost and calls of each (hour, source, source_id), from ``usage_events``: the
        table an insert commits first, so never behind a rollup read before it."""
        if not entities:
            return {}
        hours = sorted({h for h, _, _ in entities})
        rows = self.db.rows(
            "SELECT toStartOfHour(toDateTime(occurred_at, 'UTC')) AS hour, toString(source),"
            " source_id, sum(cost_usd), count() FROM usage_events"
            " WHERE tenant_id = {tenant:String}"
            f" AND occurred_at >= {{first:{TS}}} AND occurred_at < {{last:{TS}}}"
            " AND hour IN {hours:Array(DateTime('UTC'))}"
            " AND source_id IN {ids:Array(String)}"
            " GROUP BY hour, source, source_id",
            {
                "tenant": tenant_id,
                "first": hours[0],
                "last": hours[-1] + HOUR,
                "hours": hours,
                "ids": sorted({i for _, _, i in entities}),
            },
        )
        wanted = set(entities)
        found = {
            (_utc(r[0]), str(r[1]), str(r[2])): HourUsage(Decimal(r[3]), int(r[4])) for r in rows
        }
        return {k: v for k, v in found.items() if k in wanted}

    def values_with(
        self, tenant_id: str, key: str, value: str, others: list[str], hours: list[datetime]
    ) -> set[tuple[datetime, str, str]]:
        """(hour, other key, its value) of the values of the keys ``others`` that calls in
        one of ``hours`` carry together with ``key`` = ``value`` (the same calls): which
        users' spend is in a customer's hour. Bounded like :meth:`entities_with`."""
        if not hours or not others:
            return set()
        rows = self.db.rows(
            "SELECT DISTINCT toStartOfHour(toDateTime(occurred_at, 'UTC')) AS hour,"
            " other, attributes[other] AS other_value FROM usage_events"
            " ARRAY JOIN {others:Array(String)} AS other"
            " WHERE tenant_id = {tenant:String}"
            f" AND occurred_at >= {{first:{TS}}} AND occurred_at < {{last:{TS}}}"
            " AND hour IN {hours:Array(DateTime('UTC'))}"
            " AND attributes[{key:String}] = {value:String} AND other_value != ''",
            {
                "tenant": tenant_id,
                "others": others,
                "first": min(hours),
                "last": max(hours) + HOUR,
                "hours": sorted(hours),
                "key": key,
                "value": value,
            },
        )
        return {(_utc(r[0]), str(r[1]), str(r[2])) for r in rows}

    def names(self, tenant_id: str, entities: list[tuple[str, str]]) -> dict[tuple[str, str], str]:
        """Latest names of (source, source_id) pairs."""
        if not entities:
            return {}
        rows = self.db.rows(
            "SELECT toString(source), source_id, argMax(source_name, named_at) FROM source_names"
            " WHERE tenant_id = {tenant:String}"
            " AND (toString(source), source_id) IN {pairs:Array(Tuple(String, String))}"
            " GROUP BY source, source_id",
            {"tenant": tenant_id, "pairs": entities},
        )
        return {(str(r[0]), str(r[1])): str(r[2]) for r in rows}
