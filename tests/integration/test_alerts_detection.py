"""Spike alerts on simulate's 7-day demo, through the real worker and ClickHouse.

The demo injects one agent that runs amok for an hour (the manifest names it under
``spikes``). Evaluating as the alerter does, every half second while the week is ingested
(out of order: six partitions in parallel) and once more at the end, must raise exactly one
spike alert, for that agent and an hour of that spike, and a second one when it ended; the
alerts over the rest of the week that no injected spike explains are counted and printed
(the target is 0, and the test holds it there for the demo's seed).
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest

from llm_usage.clickhouse import connect
from llm_usage.settings import Settings
from llm_usage.simulate import SimulationConfig, book_pricer, generate, publish, write_calls
from producers.topics import ensure_topics
from query_api.db import ClickHouse
from stream_processor.alerts.evaluator import Evaluator
from stream_processor.alerts.store import Alert
from stream_processor.harness import WorkerProcess
from stream_processor.pricing import PriceBook
from tests.conftest import wait_for
from tests.integration.alerting import demo_end, expensive_call, fast_settings, stored_calls

DEMO_CALLS = 30_000  # what `llm-usage run` backfills


@pytest.mark.sharded
def test_demo_week_raises_one_spike_alert_for_the_injected_agent_and_no_false_ones(
    migrated: Settings,
    worker_factory: Callable[[Settings], WorkerProcess],
    figure: Callable[[str], None],
) -> None:
    settings = fast_settings(migrated)
    asyncio.run(ensure_topics(settings))
    worker = worker_factory(settings)
    worker.wait_assigned(timeout=90)
    end = demo_end()
    cfg = SimulationConfig(calls=DEMO_CALLS, days=7, seed=42, end=end)
    evaluator = Evaluator(settings, ClickHouse(settings))
    raised: list[Alert] = []
    done = threading.Event()

    def evaluate_while_ingesting() -> None:  # as the alerter does during a backfill
        while not done.wait(0.5):
            raised.extend(evaluator.tick())

    judge = threading.Thread(target=evaluate_while_ingesting, name="alerter")
    judge.start()
    try:
        manifest = asyncio.run(publish(settings, cfg))
        wait_for(
            lambda: stored_calls(settings) >= manifest.total.calls,
            180,
            "the demo in ClickHouse",
            detail=worker.tail,
        )
    finally:
        done.set()
        judge.join(30)
    try:
        raised += evaluator.tick()
        again = evaluator.tick()
    finally:
        evaluator.close()
    truth = manifest.as_json()["spikes"]
    assert len(truth) == 1, truth
    spike = truth[0]
    start = datetime.fromisoformat(spike["start"])
    stop = datetime.fromisoformat(spike["end"])
    started = [a for a in raised if a.kind == "spike_started"]
    ended = [a for a in raised if a.kind == "spike_ended"]

    def explained(alert_start: datetime, source_id: str) -> bool:
        hour_of_start = start.replace(minute=0, second=0, microsecond=0)
        return source_id == spike["source_id"] and hour_of_start <= alert_start < stop

    right = [a for a in started if explained(a.window_start, a.source_id)]
    false = [a for a in started if not explained(a.window_start, a.source_id)]
    figure(
        f"spike alerts over the 7-day demo ({DEMO_CALLS:,} calls, seed 42, ending {end:%H:%M}"
        f" UTC): {len(started)} raised, {len(right)} for the injected spike, {len(false)} false"
    )
    for alert in started + ended:
        print(f"  {alert.kind} {alert.window_start:%Y-%m-%d %H:%M} {alert.message}")
    assert len(right) == 1, (spike, [a.message for a in started])
    alert = right[0]
    assert (alert.tenant_id, alert.source) == (spike["tenant_id"], spike["source"])
    assert alert.source_name, "the alert names the agent"
    assert alert.observed_cost_usd > 3 * alert.baseline_cost_usd
    assert false == [], [a.message for a in false]
    # ... and it ended: the hour after it is complete, and back to normal
    assert [a.alert_id for a in ended] == [f"{alert.alert_id}-end"]
    assert ended[0].window_end <= stop + timedelta(hours=2)
    # judging the same data again raises nothing: one alert per breach, not per evaluation
    assert again == []


def test_an_hour_judged_before_its_baseline_arrived_is_judged_again(migrated: Settings) -> None:
    """A backfill arrives out of order: here the spike's day and the days after it first,
    the week before it later. The first look has no baseline (no verdict); the baseline's
    arrival must make the alerter judge the later hours again, and find the spike."""
    end = demo_end()
    published = list(generate(SimulationConfig(calls=DEMO_CALLS, days=7, seed=42, end=end)))
    calls = [p.call for p in published if p.call is not None and not p.duplicate]
    spike_start = next(p.spike[0] for p in published if p.spike is not None)
    cut = spike_start - timedelta(days=1)
    client = connect(migrated)
    evaluator = Evaluator(migrated, ClickHouse(migrated))
    price = book_pricer(PriceBook.load())
    try:
        write_calls(client, [c for c in calls if c.occurred_at >= cut], price)
        first = [a for a in evaluator.tick() if a.kind == "spike_started"]
        evaluator.since = datetime.now(UTC)  # the next look is minutes later: only new rows
        write_calls(client, [c for c in calls if c.occurred_at < cut], price)
        second = [a for a in evaluator.tick() if a.kind == "spike_started"]
    finally:
        evaluator.close()
        client.close()
    assert first == [], [a.message for a in first]
    assert [(a.source_id, a.window_start.date()) for a in second] == [
        ("agent-1-001", spike_start.date())
    ], [a.message for a in second]


def test_late_calls_in_the_hour_before_an_alerted_spike_raise_no_second_alert(
    migrated: Settings,
) -> None:
    """The spike's first hour arrives last (a late producer): the spike was already alerted
    from its second hour; tracing it back to an earlier start must keep that one alert."""
    end = demo_end()  # the spike at 13:30: half of it in each of two clock hours
    published = list(generate(SimulationConfig(calls=DEMO_CALLS, days=7, seed=42, end=end)))
    calls = [p.call for p in published if p.call is not None and not p.duplicate]
    spike_start = next(p.spike[0] for p in published if p.spike is not None)
    assert spike_start.minute == 30  # half of the spike in each of two clock hours
    first_hour = spike_start.replace(minute=0, second=0, microsecond=0)
    late = [c for c in calls if first_hour <= c.occurred_at < first_hour + timedelta(hours=1)]
    client = connect(migrated)
    evaluator = Evaluator(migrated, ClickHouse(migrated))
    price = book_pricer(PriceBook.load())
    try:
        write_calls(client, [c for c in calls if c not in late], price)
        first = [a for a in evaluator.tick() if a.kind == "spike_started"]
        evaluator.since = datetime.now(UTC)
        write_calls(client, late, price)
        second = [a for a in evaluator.tick() if a.kind == "spike_started"]
    finally:
        evaluator.close()
        client.close()
    assert [(a.source_id, a.window_start) for a in first] == [
        ("agent-1-001", first_hour + timedelta(hours=1))
    ], [a.message for a in first]
    assert second == [], [a.message for a in second]


def test_a_conversation_spike_and_a_tenant_spike_of_new_conversations_alert_once_each(
    migrated: Settings,
) -> None:
    """Spikes are judged per conversation and per tenant too, not only per agent. On the
    demo week: one of tenant-2's conversations suddenly costs many times its normal hour
    (its own alert; the tenant's hour, which it explains, raises none); and forty
    conversations of tenant-3 that never existed before (no normal of their own yet) all
    spend in one hour: only the tenant's detector can see that, and it alerts."""
    end = demo_end()
    published = list(generate(SimulationConfig(calls=DEMO_CALLS, days=7, seed=42, end=end)))
    calls = [p.call for p in published if p.call is not None and not p.duplicate]
    chats = Counter(c.source_id for c in calls if c.tenant_id == "tenant-2" and c.source == "chat")
    conversation = chats.most_common(1)[0][0]
    conversation_hour = (end - timedelta(hours=30)).replace(minute=0, second=0)
    tenant_hour = (end - timedelta(hours=54)).replace(minute=0, second=0)
    injected = [
        expensive_call("tenant-2", "chat", conversation, conversation_hour + timedelta(minutes=m))
        for m in range(0, 60, 2)
    ] + [
        expensive_call("tenant-3", "chat", f"conv-new-{n}", tenant_hour + timedelta(minutes=n))
        for n in range(40)
        for _ in range(3)
    ]
    client = connect(migrated)
    evaluator = Evaluator(migrated, ClickHouse(migrated))
    try:
        write_calls(client, calls + injected, book_pricer(PriceBook.load()))
        raised = evaluator.tick()
    finally:
        evaluator.close()
        client.close()
    started = [a for a in raised if a.kind == "spike_started" and a.tenant_id != "tenant-1"]
    assert sorted((a.tenant_id, a.scope, a.source_id, a.window_start) for a in started) == [
        ("tenant-2", "entity", conversation, conversation_hour),
        ("tenant-3", "tenant", "", tenant_hour),
    ], [a.message for a in started]
    conversation_alert = next(a for a in started if a.scope == "entity")
    assert conversation_alert.source == "chat" and conversation_alert.source_name
