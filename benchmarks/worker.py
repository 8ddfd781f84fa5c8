"""Stream-processor throughput and memory: one worker, the local stack, real ClickHouse.

    llm-usage bench worker [--events 200000] [--per-message 200]

It starts its own Tansu broker and ClickHouse server on free ports (temporary
LLM_USAGE_HOME), migrates a fresh database, and publishes ``--events`` call events
through producers/ (``UsagePublisher``: up to ``--per-message`` events per Kafka
message, lz4; ``--duplicates`` of them published a second time) BEFORE the worker
starts. Then it starts one
worker subprocess (``python -m stream_processor``) and measures the time from the first
row in ClickHouse to the last: that is the worker's catch-up throughput, everything
included (Kafka fetch, validation, dedupe, pricing, enrichment, the ledger, inserts and
the materialized views). Peak RSS is the worker's VmHWM. Everything started is stopped by
PID at the end.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from llm_usage.clickhouse import apply_migrations, connect
from llm_usage.localstack import LocalStack, throwaway_settings
from llm_usage.localstack.processes import free_port
from llm_usage.settings import Settings
from producers.contract import Source, UsageEvent
from producers.publisher import UsagePublisher
from stream_processor.harness import WorkerProcess

MODELS = ["claude-sonnet-4-5-20250929", "claude-opus-4-5", "claude-haiku-4-5", "gpt-4o"]


def attributes_of(i: int) -> dict[str, str]:
    """What a busy product attaches to a call: one of 50,000 users, a customer, a feature
    and an environment."""
    return {
        "user": f"user-{(i * 7919) % 50_000}",
        "customer": f"customer-{i % 40}",
        "feature": ("search", "summary", "chat", "triage")[i % 4],
        "environment": "production" if i % 10 else "staging",
    }


def build_events(events: int, attributes: bool = False) -> list[UsageEvent]:
    """Realistic call events: 20 tenants, 5000 conversations, four models; with
    ``attributes``, four attributes on every call (:func:`attributes_of`)."""
    now = datetime.now(UTC) - timedelta(hours=1)
    return [
        UsageEvent(
            tenant_id=f"tenant-{i % 20}",
            occurred_at=now - timedelta(seconds=i % 86_400),
            source=(Source.CHAT, Source.AGENT, Source.MEMORY)[i % 3],
            source_id=f"conv-{i % 5000}",
            source_name="Quarterly planning" if i % 2 else None,
            model=MODELS[i % len(MODELS)],
            input_tokens=1200 + i % 1000,
            output_tokens=350,
            cache_read_input_tokens=5000 if i % 4 == 0 else 0,
            duration_ms=900,
            request_id=f"req_{i:012d}",
            attributes=attributes_of(i) if attributes else {},
        )
        for i in range(events)
    ]


async def publish(settings: Settings, events: list[UsageEvent], duplicates: int) -> None:
    """Through producers/ (per-partition JSON arrays, lz4), duplicates re-published last."""
    async with UsagePublisher(settings) as publisher:
        for event in [*events, *events[:duplicates]]:
            await publisher.publish(event)
        await publisher.flush()


def run(
    *,
    events: int = 200_000,
    per_message: int = 200,
    duplicates: int = 0,
    batch_max_events: int | None = None,
    stall_s: float = 120.0,
    attributes: bool = False,
) -> dict[str, object]:
    """Publish, then time one worker catching up; prints and returns the figures as JSON."""
    home = Path(tempfile.mkdtemp(prefix="bench-worker-"))
    settings = throwaway_settings(
        home,
        clickhouse_database="bench_worker",
        processor_group="bench-worker",
        processor_web_port=free_port(),
        processor_session_timeout_s=6.0,
        processor_rebalance_timeout_s=3.0,
        processor_log_level="warning",
        producer_batch_events=per_message,
        **({"processor_batch_max_events": batch_max_events} if batch_max_events else {}),
    )
    stack = LocalStack(settings)
    stack.up()
    worker = WorkerProcess(settings, home / "worker.log")
    try:
        client = connect(settings, database="")
        apply_migrations(client, settings)
        built = time.perf_counter()
        asyncio.run(publish(settings, build_events(events, attributes), duplicates))
        print(
            f"published {events} events (+{duplicates} duplicates) through "
            f"producers/ in {time.perf_counter() - built:.1f}s"
        )
        client = connect(settings)
        started = time.perf_counter()
        worker.start()
        first_row = None
        count = 0
        moved = started
        while count < events:
            now_count = int(str(client.command("SELECT count() FROM usage_events")))
            if now_count and first_row is None:
                first_row = time.perf_counter()
            if now_count != count:
                count, moved = now_count, time.perf_counter()
            if not worker.running():
                raise SystemExit(f"worker died:\n{worker.tail()}")
            if time.perf_counter() - moved > stall_s:
                raise SystemExit(
                    f"no row for {stall_s:.0f}s at {count} of {events}; worker log "
                    f"{worker.log_path}:\n{worker.tail()}"
                )
            time.sleep(0.05)
        done = time.perf_counter()
        peak_kib = worker.peak_rss_kib()
        metrics = worker.metrics()
        assert first_row is not None
        result: dict[str, object] = {
            "events": events,
            "events_per_message": per_message,
            "attributes_per_event": 4 if attributes else 0,
            "duplicates_dropped": int(metrics["llm_usage_processor_events_deduped_total"]),
            "batch_max_events": settings.processor_batch_max_events,
            "startup_to_first_row_s": round(first_row - started, 2),
            "first_to_last_row_s": round(done - first_row, 2),
            "events_per_s": round(events / (done - first_row)),
            "events_per_s_including_startup": round(events / (done - started)),
            "worker_peak_rss_mib": round(peak_kib / 1024, 1),
            "inserts": int(metrics["llm_usage_processor_insert_seconds_count"]),
            "insert_seconds_total": round(metrics["llm_usage_processor_insert_seconds_sum"], 2),
        }
        print(json.dumps(result, indent=2))
    finally:
        worker.stop()
        stack.down()
    return result
