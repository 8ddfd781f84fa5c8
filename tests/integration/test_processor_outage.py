"""Two workers split the partitions; a ClickHouse outage pauses them, nothing is lost.

While ClickHouse is down the workers retry with backoff, report it on /health, and stop
taking new messages (their buffers fill); when it is back they catch up, and raw rows and
both rollups equal what was published.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest

from llm_usage.localstack import LocalStack
from llm_usage.localstack.processes import free_port
from llm_usage.settings import Settings
from stream_processor.harness import WorkerProcess
from tests.conftest import committed_everything, wait_for
from tests.integration.test_processor_e2e import (
    cost_of,
    counted,
    expected_totals,
    make_events,
    publish,
    totals,
    worker_settings,
)

pytestmark = pytest.mark.integration


def test_two_workers_split_partitions_and_survive_a_clickhouse_outage(
    stack: LocalStack,
    migrated: Settings,
    worker_factory: Callable[[Settings], WorkerProcess],
) -> None:
    settings = worker_settings(migrated, processor_batch_max_events=200)
    events = make_events(4000, datetime.now(UTC) - timedelta(days=10), step=timedelta(minutes=3))
    asyncio.run(publish(settings, events[:2000]))
    one = worker_factory(settings)
    two = worker_factory(settings.model_copy(update={"processor_web_port": free_port()}))

    def split() -> bool:
        a, b = one.health(), two.health()
        return bool(a and b and a["assigned"] and b["assigned"])

    wait_for(split, 60, "both workers to own partitions")
    a, b = one.health()["assigned"], two.health()["assigned"]  # type: ignore[index]
    assert sorted(a + b) == list(range(settings.topic_partitions)), (a, b)
    wait_for(lambda: totals(settings)["raw"][0] == 2000, 60, "the first half")

    stack.stop_service("clickhouse")
    try:
        asyncio.run(publish(settings, events[2000:]))
        asyncio.run(publish(settings, events[1500:2500]))  # duplicates across the outage

        def both_report_it() -> bool:  # each owns partitions the new events went to
            return all((w.health() or {}).get("clickhouse_error") for w in (one, two))

        wait_for(
            both_report_it,
            30,
            "both workers to report ClickHouse on /health",
            detail=lambda: str([w.health() for w in (one, two)]),
        )
    finally:
        stack.start_service("clickhouse")

    expected = expected_totals(events, [cost_of(e) for e in events])
    wait_for(lambda: counted(settings, len(events)), 90, "catching up, rollups included")
    # Every row can be in before the workers got to the duplicates (published last): once
    # every message is committed, each one is handled and the dedupe count is final.
    wait_for(lambda: committed_everything(settings), 60, "the workers to commit every message")
    got = totals(settings)
    assert got["raw"] == expected
    assert got["hourly"] == expected
    assert got["daily"] == expected
    assert one.running() and two.running()
    deduped = sum(w.metrics()["llm_usage_processor_events_deduped_total"] for w in (one, two))
    assert deduped == 1000
