"""Publish throughput and what the spool costs, against a real local broker.

    llm-usage bench publish [--events 200000] [--bootstrap HOST:PORT]

Without ``--bootstrap`` it starts its own Tansu broker on a free port (in a temporary
LLM_USAGE_HOME) and stops it by PID at the end. Every figure is events per second from
one publisher in one process; events are built before the clock starts, so the figures
are the publisher's cost (serialise, buffer, batch, compress, send, ack), not pydantic's.
Last, on a broker of its own (whatever ``--bootstrap`` says) frozen with SIGSTOP (sends hang
instead of failing), it times each publish(): the publisher must not wait for a hung broker.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from llm_usage.localstack import LocalStack, throwaway_settings
from llm_usage.localstack.processes import free_port
from llm_usage.localstack.stack import BROKER
from llm_usage.settings import Settings
from producers.contract import Source, UsageEvent
from producers.publisher import SyncUsagePublisher, UsagePublisher


def make_events(n: int) -> list[UsageEvent]:
    now = datetime.now(UTC)
    return [
        UsageEvent(
            tenant_id=f"tenant-{i % 20}",
            occurred_at=now,
            source=Source.CHAT if i % 3 else Source.AGENT,
            source_id=f"conv-{i % 5000}",
            source_name="Quarterly planning",
            model="claude-sonnet-4-6",
            input_tokens=1000 + i % 5000,
            output_tokens=200 + i % 800,
            cache_creation_input_tokens=i % 1000,
            cache_read_input_tokens=i % 7000,
            duration_ms=900 + i % 4000,
            request_id=f"req_{i:024d}",
            metadata={"service": "chat-api"},
        )
        for i in range(n)
    ]


async def publish_all(settings: Settings, events: list[UsageEvent]) -> dict[str, float]:
    latencies: list[float] = []
    async with UsagePublisher(settings) as pub:
        started = time.perf_counter()
        for i, event in enumerate(events):
            if i % 100 == 0:
                t = time.perf_counter()
                await pub.publish(event)
                latencies.append(time.perf_counter() - t)
            else:
                await pub.publish(event)
        queued = time.perf_counter()
        await pub.flush()
        done = time.perf_counter()
        stats = pub.snapshot()
    return {
        "events_per_s": len(events) / (done - started),
        "publish_calls_per_s": len(events) / (queued - started),
        "p50_us": statistics.median(latencies) * 1e6,
        "p99_us": statistics.quantiles(latencies, n=100)[98] * 1e6,
        "messages": float(stats["messages"]),
        "spooled": float(stats["spooled"]),
        "acked": float(stats["acked"]),
    }


def publish_sync(settings: Settings, events: list[UsageEvent]) -> float:
    with SyncUsagePublisher(settings) as pub:
        started = time.perf_counter()
        for event in events:
            pub.publish(event)
        pub.flush()
        elapsed = time.perf_counter() - started
        assert pub.stats.acked == len(events), pub.stats
    return len(events) / elapsed


async def spool_then_replay(
    settings: Settings, events: list[UsageEvent], fsync: bool
) -> tuple[float, float, int]:
    """Spool everything with Kafka unreachable, then replay it into the real broker."""
    down = settings.model_copy(
        update={"kafka_bootstrap": f"127.0.0.1:{free_port()}", "producer_spool_fsync": fsync}
    )
    async with UsagePublisher(down) as pub:
        started = time.perf_counter()
        for event in events:
            await pub.publish(event)
        await pub.flush()
        spool_rate = len(events) / (time.perf_counter() - started)
        spool_bytes = pub.spool.size
        assert pub.stats.spooled == len(events), pub.stats
    started = time.perf_counter()
    async with UsagePublisher(settings) as pub:
        ok = await pub.wait_replayed(600)
        replay_rate = len(events) / (time.perf_counter() - started)
        assert ok and pub.stats.replayed == len(events), pub.stats
    return spool_rate, replay_rate, spool_bytes


def publish_while_hung(events: list[UsageEvent], home: Path) -> dict[str, float]:
    """Time each publish() while a broker of its own is frozen (the settings of
    tests/integration/test_producers_outage.py); then wait until the spool is replayed."""
    settings = throwaway_settings(
        home,
        topic_partitions=2,
        producer_batch_events=20,
        producer_buffer_events=200,
        producer_request_timeout_ms=1000,
        producer_retry_backoff_ms=100,
    )
    local = LocalStack(settings)
    local.start_service(BROKER)
    try:
        (pid,) = [s.pid for s in local.status() if s.pid]
        return asyncio.run(_publish_while_hung(settings, events, pid))
    finally:
        local.stop_service(BROKER)


async def _publish_while_hung(
    settings: Settings, events: list[UsageEvent], pid: int
) -> dict[str, float]:
    warmup, during = events[:50], events[50:]
    latencies: list[float] = []
    async with UsagePublisher(settings) as pub:
        for event in warmup:
            await pub.publish(event)
        await pub.flush()
        os.kill(pid, signal.SIGSTOP)
        try:
            for event in during:
                t = time.perf_counter()
                await pub.publish(event)
                latencies.append(time.perf_counter() - t)
                await asyncio.sleep(0)
        finally:
            os.kill(pid, signal.SIGCONT)
        await pub.flush()
        assert await pub.wait_replayed(60), pub.stats
        stats = pub.snapshot()
    return {
        "max_ms": max(latencies) * 1e3,
        "p99_us": statistics.quantiles(latencies, n=100)[98] * 1e6,
        "spooled": float(stats["spooled"]),
    }


@contextmanager
def broker(bootstrap: str | None, home: Path) -> Iterator[str]:
    if bootstrap:
        yield bootstrap
        return
    settings = throwaway_settings(
        home,
    )
    local = LocalStack(settings)
    local.start_service(BROKER)
    try:
        yield settings.kafka_bootstrap
    finally:
        local.stop_service(BROKER)


def run(*, events: int = 200_000, bootstrap: str | None = None) -> None:
    """Every publishing mode in turn on one broker (``bootstrap``, else a local one)."""
    logging.basicConfig(level=logging.ERROR)
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)  # connection-refused noise
    n = events
    made = make_events(n)
    size = sum(len(e.to_json()) for e in made[:1000]) / 1000
    print(f"{n} events, {size:.0f} bytes of JSON each")
    with tempfile.TemporaryDirectory() as tmp, broker(bootstrap, Path(tmp) / "stack") as bs:
        run = 0

        def settings(**kw: object) -> Settings:
            nonlocal run
            run += 1
            return Settings(
                kafka_bootstrap=bs,
                home=Path(tmp) / f"run{run}",
                topic_calls=f"bench.calls.{run}.{time.time_ns()}",
                topic_entities=f"bench.entities.{run}.{time.time_ns()}",
                **kw,  # type: ignore[arg-type]
            )

        r = asyncio.run(publish_all(settings(), made))
        print(
            f"async publisher, zstd, batches of <=200:     {r['events_per_s']:>9,.0f} events/s "
            f"acked ({r['messages']:.0f} Kafka messages, {n / max(r['messages'], 1):.0f} "
            f"events each); publish() alone {r['publish_calls_per_s']:,.0f}/s, "
            f"p50 {r['p50_us']:.1f} us, p99 {r['p99_us']:.1f} us; spooled {r['spooled']:.0f}"
        )
        small = made[: min(n, 20_000)]
        r = asyncio.run(publish_all(settings(producer_batch_events=1), small))
        print(
            f"async publisher, one event per message:       {r['events_per_s']:>9,.0f} events/s "
            f"acked ({len(small)} events)"
        )
        for codec in ("lz4", "none"):
            r = asyncio.run(publish_all(settings(producer_compression=codec), small))
            print(
                f"async publisher, compression={codec:<5}:        {r['events_per_s']:>9,.0f} "
                f"events/s acked ({len(small)} events; default zstd above)"
            )
        rate = publish_sync(settings(), made)
        print(f"sync facade (thread), default batching:      {rate:>9,.0f} events/s acked")
        for fsync in (False, True):
            count = n if not fsync else min(n, 50_000)
            spool, replay, nbytes = asyncio.run(spool_then_replay(settings(), made[:count], fsync))
            print(
                f"spool (Kafka down, fsync={'on ' if fsync else 'off'}):  {spool:>9,.0f} events/s "
                f"to disk, {nbytes / count:.0f} bytes/event; replay {replay:>9,.0f} events/s "
                f"({count} events)"
            )
        r = publish_while_hung(made[: min(n, 3050)], Path(tmp) / "hung")
        print(
            f"broker frozen (SIGSTOP), buffer 200:   publish() max {r['max_ms']:.1f} ms, "
            f"p99 {r['p99_us']:.0f} us; {r['spooled']:.0f} events spooled, all replayed"
        )
