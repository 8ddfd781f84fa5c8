"""The alerter: every ``alert_interval_s`` it judges what changed and raises new alerts.

Why an evaluator over the rollups and not Faust tables in the worker: the rollups are
already exact (deduplicated, priced, repriced), keyed by event time and durable, so a week's
backfill is judged exactly like live traffic, and a crashed worker or alerter loses nothing:
every alert has a deterministic id (the entity and the hour its spike started, or the
budget, period and threshold), so judging an hour again finds the alert it already raised.
The 7-day baseline the detector needs is in ``usage_hourly`` already; a Faust table would
keep a second copy of it in a changelog. Latency: the worker writes within about a second,
and the alerter looks every ``alert_interval_s`` (15 s), far inside the 2 minutes allowed.

Per tick:

1. ``ingest_activity`` names the (tenant, event-time hour) pairs written since the last
   tick; those hours, plus the start hours of spikes still open, are judged per agent,
   conversation and tenant (:mod:`spikes`), and per value of each watched attribute key
   (``alert_spike_attribute_keys``: each user, each customer) that reached the spike floor
   in one of those hours. A tenant's spike is not raised on its own when one of its agents,
   conversations or values is anomalous in the same hour: that alert names it. A value's
   is not when one of its own agents or conversations (whose calls in that hour carry the
   value), or a value of an earlier key sharing its calls (its user, for a customer), is.
2. Every budget's spend in its current period is compared with its thresholds.
3. New alerts go to ClickHouse (``alerts``), then to the ``llm-usage.alerts`` topic (key:
   alert id; consumers drop repeats), then to each webhook of the tenant (at least once).
4. The used-up hard budgets of each tenant go to the budget-status topic, for producers.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import signal
import time
from collections import defaultdict
from collections.abc import Callable, Hashable, Iterable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import TypeVar

import httpx
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from llm_usage.kafka import kafka_client_options
from llm_usage.settings import Settings
from producers.topics import ensure_topics
from query_api.db import ClickHouse, Unavailable
from query_api.repository import UsageRepository
from stream_processor.alerts.budgets import Budget, Period, crossed, spend_of, used_up
from stream_processor.alerts.spikes import HOUR, HourUsage, Spike, SpikeRule, judge, spikes
from stream_processor.alerts.store import TOPIC_TARGET, Alert, AlertStore, Webhook
from stream_processor.alerts.webhooks import deliver

log = logging.getLogger(__name__)

LOOKBACK = timedelta(days=8)  # a restart re-judges the hours written in this long
SAFETY = timedelta(seconds=30)  # inserts in flight when a tick read ingest_activity
LATENESS = timedelta(minutes=5)  # an hour counts as complete this long after it ended
TENANT = ("", "")  # the (source, source_id) key of a tenant's own series
SubjectT = TypeVar("SubjectT", bound=Hashable)  # what a series is of: an entity, a value


def _id(*parts: object) -> str:
    return hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:32]


def spike_id(tenant: str, source: str, source_id: str, start: datetime) -> str:
    return _id("spike", tenant, source, source_id, start.isoformat())


def attribute_spike_id(tenant: str, key: str, value: str, start: datetime) -> str:
    """The id of a spike of one attribute value (never equal to an entity's: another kind)."""
    return _id("attribute-spike", tenant, key, value, start.isoformat())


def _hour(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def rule_of(settings: Settings) -> SpikeRule:
    return SpikeRule(
        sensitivity=settings.alert_spike_sensitivity,
        min_ratio=settings.alert_spike_min_ratio,
        min_cost_usd=settings.alert_spike_min_cost_usd,
        min_calls=settings.alert_spike_min_calls,
    )


def _money(value: Decimal) -> str:
    return f"${value.quantize(Decimal('0.01'))}"


def _tenant_series(
    entities: Iterable[dict[datetime, HourUsage]],
) -> dict[datetime, HourUsage]:
    cost: dict[datetime, Decimal] = defaultdict(Decimal)
    calls: dict[datetime, int] = defaultdict(int)
    for usage in entities:
        for hour, u in usage.items():
            cost[hour] += u.cost_usd
            calls[hour] += u.calls
    return {hour: HourUsage(cost[hour], calls[hour]) for hour in cost}


def _spike_hours(found: list[Spike], complete_before: datetime) -> list[datetime]:
    """Every hour of the spikes in ``found`` (an open one: up to ``complete_before``)."""
    hours: list[datetime] = []
    for spike in found:
        end = spike.end or max(complete_before, spike.start + HOUR)
        hour = spike.start
        while hour < end:
            hours.append(hour)
            hour += HOUR
    return hours


class Evaluator:
    """The synchronous part of a tick: read ClickHouse, judge, store new alerts."""

    def __init__(
        self, settings: Settings, db: ClickHouse, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.settings = settings
        self.store = AlertStore(db)
        self.repository = UsageRepository(db)
        self.rule = rule_of(settings)
        self.attribute_keys = settings.spike_attribute_keys
        self.clock = clock
        self.since = datetime.fromtimestamp(clock(), UTC) - LOOKBACK
        self.judged = 0  # tenant-hours judged by the last tick

    def close(self) -> None:
        self.repository.close()

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), UTC)

    def tick(self) -> list[Alert]:
        """Judge what changed; returns the alerts raised (already stored)."""
        changed = self.store.changed_hours(self.since)
        hours: dict[str, set[datetime]] = defaultdict(set)
        latest = self.since
        for tenant, hour, ingested in changed:
            hours[tenant].add(hour)
            latest = max(latest, ingested)
        for tenant, start in self.store_open_spikes():
            hours[tenant].add(start)
        raised: list[Alert] = []
        for tenant, judged in sorted(hours.items()):
            raised += self._spikes(tenant, judged)
        raised += self._budgets()
        self.since = latest - SAFETY
        self.judged = sum(len(h) for h in hours.values())
        return raised

    # --- spikes ---------------------------------------------------------------------------
    def store_open_spikes(self) -> list[tuple[str, datetime]]:
        return self.store.open_spikes()

    def _spikes(self, tenant: str, changed: set[datetime]) -> list[Alert]:
        """Judge the changed hours, and every later hour whose 7-day baseline they are in:
        a backfill arrives out of order (partitions in parallel), so an hour may have been
        judged before its baseline was complete."""
        last = min(max(changed) + self.rule.baseline, _hour(self.now()))
        start = min(changed) - self.rule.baseline - timedelta(days=1)
        end = max(max(changed), last) + timedelta(days=1)
        # The attribute rollups are read before the entity series, over every hour that
        # may be judged. The order alone does not make a value's explanation consistent
        # (an insert fills its views one after the other, in an order not relied on here):
        # ``_unexplained_value`` reads the value's own entities from usage_events for that.
        hour, candidate_hours = min(changed), set(changed)
        while hour <= last:
            candidate_hours.add(hour)
            hour += HOUR
        values: dict[tuple[str, str], dict[datetime, HourUsage]] = defaultdict(dict)
        for key, value, at, cost, calls in self.store.attribute_hourly(
            tenant,
            list(self.attribute_keys),
            start,
            end,
            sorted(candidate_hours),
            self.rule.min_cost_usd,
        ):
            values[(key, value)][at] = HourUsage(cost, calls)
        series: dict[tuple[str, str], dict[datetime, HourUsage]] = defaultdict(dict)
        for source, source_id, hour, cost, calls in self.store.hourly(tenant, start, end):
            series[(source, source_id)][hour] = HourUsage(cost, calls)
        series[TENANT] = _tenant_series(series.values())
        affected = {h for h in series[TENANT] if min(changed) <= h <= last}
        judged = changed | affected
        watermark = self.store.event_watermark(tenant) or self.now()
        complete_before = max(_hour(watermark), _hour(self.now() - LATENESS))

        found = {
            key: got
            for key, usage in series.items()
            if (got := spikes(judged, usage, self.rule, complete_before=complete_before))
        }
        # Each value of the watched attribute keys (user, customer, ...) against its own
        # normal (``values``, read above): only values that reached the spike floor in an
        # hour that may be judged.
        # A spike of a sum (a user, a customer, the tenant) that something finer explains
        # (is anomalous in one of its hours) is that one's alert, not a second one. For a
        # value, only what is part of it explains: an agent or conversation whose calls in
        # that hour carry the value, a value of an earlier watched key (user before
        # customer) whose calls in that hour are some of its calls. Anything anomalous
        # explains the tenant's. So a value alerts for what no entity of its own shows (a
        # user's spend spread over new chats), whatever other users do in that hour.
        entities = {key: usage for key, usage in series.items() if key != TENANT}
        verdicts: dict[tuple[str, Hashable, datetime], bool] = {}
        earlier: dict[tuple[str, str], dict[datetime, HourUsage]] = {}
        found_values: dict[tuple[str, str], list[Spike]] = {}
        for attr_key in self.attribute_keys:
            of_key = {kv: usage for kv, usage in values.items() if kv[0] == attr_key}
            for kv, usage in of_key.items():
                got = spikes(judged, usage, self.rule, complete_before=complete_before)
                if got and (
                    kept := self._unexplained_value(
                        tenant, kv, got, entities, earlier, complete_before, verdicts
                    )
                ):
                    found_values[kv] = kept
            earlier |= of_key
        explainers = [*entities.values(), *earlier.values()]
        tenant_spikes = found.pop(TENANT, [])
        if kept := self._unexplained(tenant_spikes, explainers, complete_before):
            found[TENANT] = kept
        names = self.store.names(tenant, [key for key in found if key != TENANT])
        candidates = []
        for (source, source_id), spike, alert_id in self._alert_ids(
            tenant, found, lambda k, h: spike_id(tenant, *k, h), complete_before
        ):
            name = names.get((source, source_id), "")
            candidates += self._spike_alerts(tenant, source, source_id, name, spike, alert_id)
        for (key, value), spike, alert_id in self._alert_ids(
            tenant, found_values, lambda k, h: attribute_spike_id(tenant, *k, h), complete_before
        ):
            candidates += self._spike_alerts(
                tenant, "", "", "", spike, alert_id, attr_key=key, attr_value=value
            )
        return self._new(tenant, candidates)

    def _unexplained(
        self,
        found: list[Spike],
        explainers: list[dict[datetime, HourUsage]],
        complete_before: datetime,
    ) -> list[Spike]:
        """The spikes of ``found`` in none of whose hours one of ``explainers`` is anomalous."""
        hours = set(_spike_hours(found, complete_before))
        explained = {
            hour
            for usage in explainers
            for hour in hours
            if judge(hour, usage, self.rule).anomalous
        }
        return [s for s in found if not explained & set(_spike_hours([s], complete_before))]

    def _anomalous(
        self,
        hour: datetime,
        candidates: dict[SubjectT, dict[datetime, HourUsage]],
        kind: str,
        verdicts: dict[tuple[str, Hashable, datetime], bool],
    ) -> set[SubjectT]:
        """The subjects of ``candidates`` anomalous in ``hour`` (verdicts kept in
        ``verdicts`` under ``kind``: several values spiking in one hour judge them once)."""
        out = set()
        for subject, usage in candidates.items():
            key = (kind, subject, hour)
            if key not in verdicts:
                verdicts[key] = judge(hour, usage, self.rule).anomalous
            if verdicts[key]:
                out.add(subject)
        return out

    def _unexplained_value(
        self,
        tenant: str,
        kv: tuple[str, str],
        found: list[Spike],
        entities: dict[tuple[str, str], dict[datetime, HourUsage]],
        earlier: dict[tuple[str, str], dict[datetime, HourUsage]],
        complete_before: datetime,
        verdicts: dict[tuple[str, Hashable, datetime], bool],
    ) -> list[Spike]:
        """The spikes of value ``kv`` in none of whose hours something of its own is
        anomalous: an entity whose calls in that hour carry the value, or a value of an
        earlier key (``earlier``) whose calls in that hour carry it too.

        Which ones are its own is read only for the hours where a candidate is anomalous,
        and only for this value (one that spiked): a few queries per spike, not per user.
        """
        key, value = kv
        hours = sorted(set(_spike_hours(found, complete_before)))
        explained: set[datetime] = set()
        # Its own entities are judged with their hour read from usage_events, which an
        # insert commits before any rollup: the value's rollup (read earlier) can hold
        # calls that the entity series, read from another rollup, does not show yet.
        if own := self.store.entities_with(tenant, key, value, hours):
            raw = self.store.entity_hours(tenant, sorted(own))
            for hour, source, source_id in own:
                usage = dict(entities.get((source, source_id), {}))
                if (seen := raw.get((hour, source, source_id))) is not None:
                    usage[hour] = seen
                if judge(hour, usage, self.rule).anomalous:
                    explained.add(hour)
        overlapping = {
            h: self._anomalous(h, earlier, "value", verdicts) for h in hours if h not in explained
        }
        if asked := [h for h, got in overlapping.items() if got]:
            others = sorted({k for h in asked for k, _ in overlapping[h]})
            explained |= {
                hour
                for hour, other, other_value in self.store.values_with(
                    tenant, key, value, others, asked
                )
                if (other, other_value) in overlapping[hour]
            }
        return [s for s in found if not explained & set(_spike_hours([s], complete_before))]

    def _alert_ids(
        self,
        tenant: str,
        found: dict[SubjectT, list[Spike]],
        id_of: Callable[[SubjectT, datetime], str],
        complete_before: datetime,
    ) -> list[tuple[SubjectT, Spike, str]]:
        """Each spike of ``found`` with the id of its alert.

        A spike already alerted from a later hour (its first hour grew past the bar only
        when late calls arrived) keeps the id it was raised with: one alert per spike.
        """
        ids = {
            (key, hour): id_of(key, hour)
            for key, got in found.items()
            for hour in _spike_hours(got, complete_before)
        }
        known = self.store.known_alerts(tenant, list(ids.values()))
        out = []
        for key, got in found.items():
            for spike in got:
                hours = _spike_hours([spike], complete_before)
                raised = [ids[(key, h)] for h in hours if ids[(key, h)] in known]
                out.append((key, spike, raised[0] if raised else ids[(key, spike.start)]))
        return out

    def _spike_alerts(
        self,
        tenant: str,
        source: str,
        source_id: str,
        name: str,
        spike: Spike,
        alert_id: str,
        *,
        attr_key: str = "",
        attr_value: str = "",
    ) -> list[Alert]:
        first = spike.first
        assert first.baseline is not None
        base = first.baseline
        if attr_key:
            who, scope = f"{attr_key} {attr_value!r}", "attribute"
        elif source:
            who, scope = f"{name or source_id} ({source})", "entity"
        else:
            who, scope = f"tenant {tenant}", "tenant"
        hour = f"{spike.start:%Y-%m-%d %H:00} UTC"
        now = self.now()
        started = Alert(
            tenant_id=tenant,
            alert_id=alert_id,
            kind="spike_started",
            scope=scope,
            source=source,
            source_id=source_id,
            source_name=name,
            budget_id="",
            threshold_pct=0,
            window_start=spike.start,
            window_end=spike.start + HOUR,
            observed_cost_usd=first.usage.cost_usd,
            observed_calls=first.usage.calls,
            baseline_cost_usd=base.cost_usd,
            baseline_calls=base.calls,
            message=(
                f"cost spike: {who} spent {_money(first.usage.cost_usd)} in {first.usage.calls}"
                f" calls in the hour from {hour}; a normal hour is {_money(base.cost_usd)}"
                f" in {base.calls:g} calls"
            ),
            raised_at=now,
            attr_key=attr_key,
            attr_value=attr_value,
        )
        alerts = [started]
        if spike.end is not None:
            alerts.append(
                Alert(
                    **{
                        **started.__dict__,
                        "alert_id": f"{alert_id}-end",
                        "kind": "spike_ended",
                        "window_end": spike.end,
                        "observed_cost_usd": spike.peak_cost_usd,
                        "message": (
                            f"cost spike over: {who} is back to normal from"
                            f" {spike.end:%Y-%m-%d %H:00} UTC"
                            f" (peak hour {_money(spike.peak_cost_usd)})"
                        ),
                    }
                )
            )
        return alerts

    def _new(self, tenant: str, candidates: list[Alert]) -> list[Alert]:
        known = self.store.known_alerts(tenant, [a.alert_id for a in candidates])
        new = [a for a in candidates if a.alert_id not in known]
        self.store.insert_alerts(new)
        return new

    # --- budgets --------------------------------------------------------------------------
    def _budgets(self) -> list[Alert]:
        raised: list[Alert] = []
        now = self.now()
        for budget in self.store.budgets():
            raised += self._budget(budget, now)
        return raised

    def _budget(self, budget: Budget, now: datetime) -> list[Alert]:
        spend = spend_of(self.repository, budget, now)
        reached = crossed(budget.thresholds, budget.limit_usd, spend.cost_usd)
        what = {
            "tenant": "the tenant",
            "source": f"source {budget.source}",
            "attribute": f"{budget.attr_key} {budget.attr_value!r}"
            + (f" in {budget.source}" if budget.source else ""),
        }.get(budget.scope, f"{budget.source} {budget.source_id}")
        candidates: list[Alert] = []
        opened: dict[int, Alert] = {}
        if budget.period is Period.ROLLING_24H:
            opened = self.store.open_budget_alerts(budget.tenant_id, budget.budget_id)
            for threshold, alert in opened.items():
                if threshold not in reached:
                    self.store.clear(alert, now)
        for threshold in reached:
            if threshold in opened:
                continue
            key = (
                now.isoformat() if budget.period is Period.ROLLING_24H else spend.start.isoformat()
            )
            candidates.append(
                Alert(
                    tenant_id=budget.tenant_id,
                    alert_id=_id("budget", budget.tenant_id, budget.budget_id, key, threshold),
                    kind="budget_threshold",
                    scope=budget.scope,
                    source=budget.source,
                    source_id=budget.source_id,
                    source_name=budget.name,
                    budget_id=budget.budget_id,
                    threshold_pct=threshold,
                    window_start=spend.start,
                    window_end=spend.end,
                    observed_cost_usd=spend.cost_usd,
                    observed_calls=spend.calls,
                    baseline_cost_usd=budget.limit_usd,
                    baseline_calls=0.0,
                    message=(
                        f"budget {budget.name or budget.budget_id!r}"
                        f" ({what}, {budget.period.value}):"
                        f" {_money(spend.cost_usd)} of {_money(budget.limit_usd)} spent,"
                        f" {threshold}% reached"
                    ),
                    raised_at=now,
                    attr_key=budget.attr_key,
                    attr_value=budget.attr_value,
                )
            )
        return self._new(budget.tenant_id, candidates)

    def budget_status(self) -> dict[str, dict[str, object]]:
        """Per tenant: its used-up hard budgets, what ``budget_guard`` refuses calls for."""
        now = self.now()
        status: dict[str, dict[str, object]] = {}
        for budget in self.store.budgets():
            entry = status.setdefault(
                budget.tenant_id,
                {"tenant_id": budget.tenant_id, "as_of": now.isoformat(), "exhausted": []},
            )
            # budget_guard knows a call's tenant, source and entity, not its attributes: a
            # hard attribute budget (the API refuses one) must never stop the whole tenant
            if not budget.hard or budget.attr_key:
                continue
            spend = spend_of(self.repository, budget, now)
            if used_up(budget, spend.cost_usd):
                exhausted = entry["exhausted"]
                assert isinstance(exhausted, list)
                exhausted.append(
                    {
                        "budget_id": budget.budget_id,
                        "name": budget.name,
                        "source": budget.source,
                        "source_id": budget.source_id,
                        "until": spend.end.isoformat(),
                    }
                )
        return status


async def _sleep_unless(stop: asyncio.Event, seconds: float) -> None:
    """Sleep ``seconds``, or less when ``stop`` is set meanwhile."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


class Alerter:
    """``llm-usage alerter``: ticks, publishes alerts and budget status, delivers webhooks."""

    def __init__(self, settings: Settings, *, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.db = ClickHouse(settings)
        self.evaluator = Evaluator(settings, self.db, clock=clock)
        self.producer: AIOKafkaProducer | None = None
        self.delivered_since = datetime.fromtimestamp(clock(), UTC) - LOOKBACK
        self.ticks = 0
        self.alerts_raised = 0

    async def run(self, stop: asyncio.Event) -> None:
        s = self.settings
        if s.producer_ensure_topics:  # off where topics are declared (Strimzi KafkaTopic)
            await ensure_topics(s, [s.topic_alerts, s.topic_budget_status])
        self.producer = AIOKafkaProducer(
            **kafka_client_options(s),
            acks="all",
            enable_idempotence=False,
            client_id=f"{s.producer_client_id}-alerter",
        )
        await self.producer.start()
        deliveries = asyncio.create_task(self._deliver_loop(stop))
        try:
            while not stop.is_set():
                began = time.monotonic()
                await self.tick()
                wait = max(0.0, s.alert_interval_s - (time.monotonic() - began))
                await _sleep_unless(stop, wait)
        finally:
            deliveries.cancel()
            await asyncio.gather(deliveries, return_exceptions=True)
            await self.producer.stop()
            self.evaluator.close()
            self.db.reset()

    async def tick(self) -> list[Alert]:
        """One evaluation; a failing ClickHouse or Kafka only postpones it to the next."""
        assert self.producer is not None
        try:
            began = time.monotonic()
            raised = await asyncio.to_thread(self.evaluator.tick)
            if self.evaluator.judged or raised:
                log.info(
                    "alerter: judged %d tenant-hours, raised %d alerts in %.2f s",
                    self.evaluator.judged,
                    len(raised),
                    time.monotonic() - began,
                )
            for alert in raised:
                log.info("alert %s: %s", alert.kind, alert.message)
            await self._publish_pending()
            status = await asyncio.to_thread(self.evaluator.budget_status)
            for tenant, entry in status.items():
                await self.producer.send_and_wait(
                    self.settings.topic_budget_status,
                    json.dumps(entry).encode(),
                    key=tenant.encode(),
                )
        except (Unavailable, KafkaError) as exc:
            log.warning("alerter: %s; trying again in %.0f s", exc, self.settings.alert_interval_s)
            return []
        except Exception:  # a bug must not stop alerting for everyone: log it, try again
            log.exception("alerter: the evaluation failed; trying again next tick")
            return []
        self.ticks += 1
        self.alerts_raised += len(raised)
        return raised

    async def _publish_pending(self) -> None:
        """Put every stored alert not yet on the alerts topic there (after a crash too).

        At least once: a crash between the send and its record sends it again; the key is
        the alert id, so a consumer drops the repeat.
        """
        assert self.producer is not None
        store = self.evaluator.store
        for alert in await asyncio.to_thread(store.unpublished, self.delivered_since):
            await self.producer.send_and_wait(
                self.settings.topic_alerts,
                json.dumps(alert.as_json()).encode(),
                key=alert.alert_id.encode(),
            )
            await asyncio.to_thread(
                store.record_delivery, alert, TOPIC_TARGET, attempts=1, status=0, delivered=True
            )

    async def _deliver_loop(self, stop: asyncio.Event) -> None:
        s = self.settings
        async with httpx.AsyncClient(timeout=s.alert_webhook_timeout_s) as client:
            while not stop.is_set():
                try:
                    pending = await asyncio.to_thread(
                        self.evaluator.store.pending_deliveries, self.delivered_since
                    )
                except Unavailable as exc:
                    log.warning("alerter: deliveries wait for ClickHouse: %s", exc)
                    pending = []
                outcomes = await asyncio.gather(
                    *(self._deliver(client, a, h) for a, h in pending), return_exceptions=True
                )
                for failure in (o for o in outcomes if isinstance(o, BaseException)):
                    # the delivery is not recorded, so it is tried again on the next round
                    log.warning("alerter: a delivery failed: %s", failure)
                await _sleep_unless(stop, 1.0)

    async def _deliver(self, client: httpx.AsyncClient, alert: Alert, hook: Webhook) -> None:
        s = self.settings
        outcome = await deliver(
            client,
            alert,
            hook,
            attempts=s.alert_webhook_attempts,
            backoff_s=s.alert_webhook_backoff_s,
        )
        await asyncio.to_thread(
            self.evaluator.store.record_delivery,
            alert,
            hook.webhook_id,
            attempts=outcome.attempts,
            status=outcome.status,
            delivered=outcome.delivered,
        )


def run_alerter(settings: Settings) -> None:
    """``llm-usage alerter``: run until SIGINT or SIGTERM."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        log.info(
            "alerter: judging new data every %.0f s (Kafka %s, ClickHouse %s)",
            settings.alert_interval_s,
            settings.kafka_bootstrap,
            settings.clickhouse_url,
        )
        await Alerter(settings).run(stop)

    asyncio.run(main())
