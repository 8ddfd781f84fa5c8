"""HTTP ingest throughput: ``POST /v1/events`` with 1, 100 and 1,000 events per request,
next to the Python publisher, against one real local broker in the same run.

    llm-usage bench http-ingest [--events 100000] [--clients 8]

It starts its own Tansu broker and one ``llm-usage ingest`` process (one uvicorn worker) on
free loopback ports, and stops both by PID. Every figure counts events that Kafka
acknowledged (``acks=all``) before the 202: what a client may consider stored.
"""

from __future__ import annotations

import asyncio
import json
import logging
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from benchmarks.publish import broker, make_events, publish_all
from llm_usage.localstack.processes import free_port
from llm_usage.runner import IngestProcess
from llm_usage.settings import Settings

KEY = "bench-ingest-key"
BATCHES = (1, 100, 1000)


async def post_all(
    url: str, bodies: list[bytes], clients: int, events_per_body: int
) -> dict[str, float]:
    """POST every body with ``clients`` concurrent keep-alive connections."""
    latencies: list[float] = []
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    accepted = 0

    async def client() -> None:
        nonlocal accepted
        async with httpx.AsyncClient(headers=headers, timeout=60) as http:
            while not queue.empty():
                body = queue.get_nowait()
                started = time.perf_counter()
                answer = await http.post(url, content=body)
                latencies.append(time.perf_counter() - started)
                if answer.status_code != 202:
                    raise RuntimeError(f"{answer.status_code}: {answer.text[:300]}")
                accepted += answer.json()["accepted"]

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    elapsed = time.perf_counter() - started
    assert accepted == len(bodies) * events_per_body, (accepted, len(bodies))
    return {
        "events_per_s": accepted / elapsed,
        "requests_per_s": len(bodies) / elapsed,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": statistics.quantiles(latencies, n=100)[98] * 1000 if len(latencies) > 1 else 0,
    }


def run(*, events: int, clients: int, ingest_workers: int = 1) -> list[dict[str, Any]]:
    logging.basicConfig(level=logging.ERROR)
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    pool = make_events(events)
    # The key decides the tenant: the bodies carry none (as a client of one tenant sends them).
    wire = [{k: v for k, v in json.loads(e.to_json()).items() if k != "tenant_id"} for e in pool]
    print(f"{events:,} events, {clients} HTTP clients, {ingest_workers} ingest process(es)")
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp, broker(None, Path(tmp) / "stack") as bootstrap:
        settings = Settings(
            kafka_bootstrap=bootstrap,
            home=Path(tmp) / "home",
            topic_calls=f"bench.http.{time.time_ns()}",
            api_keys=f"{KEY}:bench",
            ingest_port=free_port(),
            ingest_rate_events_per_s=0,
            ingest_max_events=10_000,
        )  # type: ignore[call-arg]
        ingest = IngestProcess(settings, Path(tmp) / "ingest.log", workers=ingest_workers).start()
        try:
            ingest.wait_ready()
            url = f"{ingest.base_url}/v1/events"
            for size in BATCHES:
                count = min(len(wire), 5_000 if size == 1 else len(wire))
                bodies = [
                    json.dumps(wire[i : i + size]).encode()
                    for i in range(0, count - size + 1, size)
                ]
                result = asyncio.run(post_all(url, bodies, clients, size))
                rows.append(
                    {"mode": f"HTTP, {size:,} per request", "events": len(bodies) * size, **result}
                )
            published = asyncio.run(publish_all(settings, pool))
            rows.append(
                {
                    "mode": "Python publisher (producers/)",
                    "events": len(pool),
                    "events_per_s": published["events_per_s"],
                }
            )
        finally:
            ingest.stop()
    print(
        f"{'mode':<32} {'events':>8} {'events/s':>10} {'requests/s':>11} {'p50 ms':>8} "
        f"{'p99 ms':>8}"
    )
    for row in rows:
        extra = (
            f"{row['requests_per_s']:>11,.0f} {row['p50_ms']:>8.1f} {row['p99_ms']:>8.1f}"
            if "requests_per_s" in row
            else f"{'':>11} {'':>8} {'':>8}"
        )
        print(f"{row['mode']:<32} {row['events']:>8,} {row['events_per_s']:>10,.0f} {extra}")
    return rows
