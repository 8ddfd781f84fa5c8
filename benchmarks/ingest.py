"""``llm-usage bench ingest``: end-to-end ingest figures against a plain baseline.

Runs on its own throw-away local stack (free ports, temporary folder), in one process run:

1. **pipeline**: W stream-processor workers (real ``python -m stream_processor`` children)
   consume events published through ``producers/``;
2. **baseline**: one plain aiokafka consumer decodes the same kind of messages and inserts
   them straight into ClickHouse (no Faust, no validation, no dedupe, no pricing).

Each side is measured twice: *saturated* (N events published as fast as possible; throughput
is N over first publish → last row queryable) and *steady* (half the saturated rate
for a few seconds; the delay publish → queryable per event is ``ingested_at - occurred_at``,
as every event is stamped when it is published).
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer
from rich.console import Console

from llm_usage.clickhouse import connect, migrate
from llm_usage.kafka import kafka_client_options
from llm_usage.localstack import LocalStack, stack_settings
from llm_usage.localstack.processes import free_port, free_ports
from llm_usage.settings import Settings
from llm_usage.simulate import SimulationConfig, generate
from producers.contract import UsageEvent, decode_calls
from producers.publisher import UsagePublisher
from producers.topics import ensure_topics

console = Console()
STEADY_SECONDS = 8.0
STEADY_FRACTION = 0.5  # the steady phase publishes at this share of the saturated rate


@dataclass
class Phase:
    events: int
    seconds: float
    p50_ms: float
    p99_ms: float

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0


def _events(n: int, seed: int) -> list[UsageEvent]:
    cfg = SimulationConfig(calls=n, days=1, seed=seed, duplicate_rate=0.0, rename_rate=0.0)
    return [p.call for p in generate(cfg) if p.call is not None and not p.duplicate]


async def _publish(settings: Settings, events: list[UsageEvent], rate: float | None) -> float:
    """Publish ``events`` stamped with their publish time; returns the start (epoch s)."""
    started = time.time()
    t0 = time.monotonic()
    async with UsagePublisher(settings) as publisher:
        for i, event in enumerate(events):
            now = datetime.now(UTC)
            await publisher.publish(event.model_copy(update={"occurred_at": now}))
            if rate:
                ahead = (i + 1) / rate - (time.monotonic() - t0)
                if ahead > 0:
                    await asyncio.sleep(ahead)
        await publisher.flush()
    return started


def _measure(settings: Settings, since: float, expected: int, timeout: float = 900.0) -> Phase:
    """Wait for ``expected`` rows newer than ``since`` and compute throughput and latency."""
    client = connect(settings)
    since_dt = datetime.fromtimestamp(since, UTC)
    query = (
        "SELECT count(), toFloat64(max(ingested_at)),"
        " quantileExact(0.5)(dateDiff('millisecond', occurred_at, ingested_at)),"
        " quantileExact(0.99)(dateDiff('millisecond', occurred_at, ingested_at))"
        " FROM usage_events WHERE occurred_at >= {since:DateTime64(3, 'UTC')}"
    )
    deadline = time.monotonic() + timeout
    while True:
        count, last, p50, p99 = client.query(query, parameters={"since": since_dt}).result_rows[0]
        if count >= expected or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    if count < expected:
        raise TimeoutError(f"only {count} of {expected} events became queryable")
    return Phase(int(count), float(last) - since, float(p50), float(p99))


async def _run_phase(settings: Settings, events: list[UsageEvent], rate: float | None) -> Phase:
    started = await _publish(settings, events, rate)
    return await asyncio.to_thread(_measure, settings, started, len(events))


# --- baseline: plain aiokafka -> ClickHouse ---------------------------------------------------
_BASELINE_COLUMNS = [
    "event_id", "tenant_id", "occurred_at", "source", "source_id", "source_name", "model",
    "input_tokens", "output_tokens", "cache_creation_input_tokens", "cache_read_input_tokens",
    "duration_ms", "status", "kafka_topic", "kafka_partition", "kafka_offset",
]  # fmt: skip


async def _baseline_consumer(settings: Settings, stop: asyncio.Event) -> None:
    client = connect(settings)
    consumer = AIOKafkaConsumer(
        settings.topic_calls,
        **kafka_client_options(settings),
        group_id=f"bench-baseline-{settings.topic_calls}",  # a fresh group per phase
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        rebalance_timeout_ms=3000,
        max_partition_fetch_bytes=8 * 1024 * 1024,
    )
    await consumer.start()
    try:
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=200, max_records=20_000)
            rows: list[list[Any]] = []
            for tp, records in batches.items():
                for record in records:
                    for e in decode_calls(record.value or b"[]"):
                        rows.append([
                            e["event_id"], e["tenant_id"],
                            datetime.fromisoformat(e["occurred_at"]), e["source"],
                            e["source_id"], e.get("source_name") or "", e["model"],
                            e["input_tokens"], e["output_tokens"],
                            e["cache_creation_input_tokens"], e["cache_read_input_tokens"],
                            e["duration_ms"], e["status"], tp.topic, tp.partition, record.offset,
                        ])  # fmt: skip
            if rows:
                await asyncio.to_thread(
                    client.insert, "usage_events", rows, column_names=_BASELINE_COLUMNS
                )
                await consumer.commit()
    finally:
        await consumer.stop()


def baseline_main() -> None:
    """Entry point of the baseline child process: consume until SIGTERM."""
    import signal

    from llm_usage.settings import get_settings

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        await _baseline_consumer(get_settings(), stop)

    asyncio.run(main())


async def _with_baseline(settings: Settings, body: Callable[[], Awaitable[Any]]) -> Any:
    """Run ``body`` while a baseline consumer runs in its own process (like a worker)."""
    import os
    import subprocess
    import sys

    from llm_usage.children import settings_env

    env = {k: v for k, v in os.environ.items() if not k.startswith("LLM_USAGE_")}
    env.update(settings_env(settings))
    code = "from benchmarks.ingest import baseline_main; baseline_main()"
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, start_new_session=True)
    try:
        await asyncio.sleep(5)  # process start + first group join (rebalance timeout 3 s)
        return await body()
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


# --- the benchmark --------------------------------------------------------------------------
def run(*, calls: int, workers: int, partitions: int, shards: int = 1) -> dict[str, Any]:
    from stream_processor.harness import WorkerProcess

    ports = free_ports(2 * shards + 1)  # the shards' HTTP ports, their native ports, Kafka
    with tempfile.TemporaryDirectory(prefix="llm-usage-bench-") as tmp:
        base = Settings(
            home=Path(tmp) / "home",
            kafka_bootstrap=f"127.0.0.1:{ports + 2 * shards}",
            clickhouse_url=f"http://127.0.0.1:{ports}",
            clickhouse_tcp_port=ports + shards,
            clickhouse_shards=shards,
            topic_partitions=partitions,
            processor_rebalance_timeout_s=3.0,
            processor_session_timeout_s=10.0,
            clickhouse_database="bench_pipeline",
        )  # type: ignore[call-arg]
        stack = LocalStack(base)
        stack.up()
        base = stack_settings(base)  # a cluster of the shards when there are several
        try:
            console.print(f"generating {calls:,} events …")
            events = _events(calls, seed=1)
            pipeline = base
            baseline = base.model_copy(
                update={"clickhouse_database": "bench_baseline", "topic_calls": "bench.baseline"}
            )
            baseline_steady = baseline.model_copy(update={"topic_calls": "bench.baseline.steady"})
            for s in (pipeline, baseline, baseline_steady):
                migrate(s)
                asyncio.run(ensure_topics(s))

            procs = []
            for i in range(workers):
                s = pipeline.model_copy(update={"processor_web_port": free_port()})
                procs.append(WorkerProcess(s, Path(tmp) / f"worker-{i}.log").start())
            try:
                for proc in procs:
                    proc.wait_assigned(timeout=120)
                time.sleep(4 if workers > 1 else 0)  # let the group settle after joins
                console.print(f"pipeline: {workers} worker(s), saturated …")
                p_sat = asyncio.run(_run_phase(pipeline, events, None))
                steady_rate = max(500.0, p_sat.events_per_s * STEADY_FRACTION)
                steady_n = int(steady_rate * STEADY_SECONDS)
                console.print(f"pipeline: steady at {steady_rate:,.0f} events/s …")
                p_std = asyncio.run(_run_phase(pipeline, _events(steady_n, 2), steady_rate))
                rss = [proc.peak_rss_kib() for proc in procs]
            finally:
                for proc in procs:
                    proc.stop()

            console.print("baseline: plain aiokafka → ClickHouse, saturated …")
            b_sat = asyncio.run(
                _with_baseline(baseline, lambda: _run_phase(baseline, events, None))
            )
            b_rate = max(500.0, b_sat.events_per_s * STEADY_FRACTION)
            b_events = _events(int(b_rate * STEADY_SECONDS), 3)
            console.print(f"baseline: steady at {b_rate:,.0f} events/s …")
            b_std = asyncio.run(
                _with_baseline(
                    baseline_steady, lambda: _run_phase(baseline_steady, b_events, b_rate)
                )
            )
        finally:
            stack.down()

    result = {
        "calls": calls,
        "workers": workers,
        "partitions": partitions,
        "shards": shards,
        "events_per_s": round(p_sat.events_per_s, 1),
        "baseline_events_per_s": round(b_sat.events_per_s, 1),
        "ratio_to_baseline": round(p_sat.events_per_s / b_sat.events_per_s, 3),
        "latency_p50_ms": p_std.p50_ms,
        "latency_p99_ms": p_std.p99_ms,
        "steady_rate_events_per_s": round(steady_rate, 1),
        "saturated_latency_p50_ms": p_sat.p50_ms,
        "saturated_latency_p99_ms": p_sat.p99_ms,
        "baseline_latency_p50_ms": b_std.p50_ms,
        "baseline_latency_p99_ms": b_std.p99_ms,
        "worker_peak_rss_mib": [round(k / 1024, 1) for k in rss],
    }
    console.print(
        f"\npipeline ({workers} worker(s)): {result['events_per_s']:,} events/s saturated; "
        f"publish→queryable p50 {p_std.p50_ms:.0f} ms, p99 {p_std.p99_ms:.0f} ms at "
        f"{steady_rate:,.0f} events/s "
        f"(saturated: p50 {p_sat.p50_ms:.0f} / p99 {p_sat.p99_ms:.0f} ms)"
    )
    console.print(
        f"baseline (aiokafka → ClickHouse): {result['baseline_events_per_s']:,} events/s; "
        f"p50 {b_std.p50_ms:.0f} ms, p99 {b_std.p99_ms:.0f} ms at {b_rate:,.0f} events/s"
    )
    console.print(f"ratio pipeline/baseline: {result['ratio_to_baseline']}; "
                  f"worker peak RSS {result['worker_peak_rss_mib']} MiB")  # fmt: skip
    print(json.dumps(result))
    return result
