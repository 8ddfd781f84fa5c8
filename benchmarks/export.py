"""``llm-usage bench export``: download records.csv of N calls and watch the API's memory.

Runs on a throw-away ClickHouse (the local stack's server in a temporary folder, on free
loopback ports; no broker). N calls of one tenant are written server-side with
``INSERT ... SELECT FROM numbers()`` straight into ``usage_events`` (the materialized views
fill the rollups and latest names as the worker's inserts would), spread over the 30 days
before now, with attributes (a user, a customer) and 12-decimal costs. The API then runs as
a real ``uvicorn`` child process; after a warm-up (a summary and a small export, so the
code paths are loaded), ``/v1/usage/records.csv`` of the whole window is downloaded to a
file. Printed: the API process's resident memory and peak (VmRSS / VmHWM from
``/proc/<pid>/status``) before and after the download, the largest RSS sampled during it,
rows, bytes, seconds (and time to first byte); then a check that the file has one row per
call of ``/v1/usage/summary`` and that its cost column sums exactly to the summary's cost.

    llm-usage bench export --events 1000000
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import tempfile
import threading
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console

from benchmarks.api import start_api, stop_api
from llm_usage.clickhouse import connect, migrate
from llm_usage.localstack import LocalStack, throwaway_settings
from llm_usage.localstack.processes import free_port

console = Console()

TENANT, KEY = "bench", "bench-key"
DAY_MS = 86_400_000
SPAN_DAYS = 30

# N calls of one tenant in time order over [start_ms, start_ms + span_ms): 300 agents and
# conversations that live a day; a user (one of 5,000) on chat and memory calls and a
# customer (one of 40) on every call; 2% unpriced, 20% batch; costs with 12 decimals.
LOAD_SQL = """
INSERT INTO usage_events (event_id, tenant_id, occurred_at, source, source_id, source_name,
    model, input_tokens, output_tokens, cache_creation_input_tokens, cache_read_input_tokens,
    priced, service_tier, cost_usd, duration_ms, status, request_id, kafka_topic,
    kafka_partition, kafka_offset, attributes)
SELECT
    generateUUIDv4(number) AS event_id,
    {tenant:String} AS tenant_id,
    fromUnixTimestamp64Milli(toInt64({start_ms:Int64}
        + intDiv(number * {span_ms:UInt64}, {events:UInt64})), 'UTC') AS occurred_at,
    multiIf(h % 10 < 6, 'chat', h % 10 < 9, 'agent', 'memory') AS source,
    if(source = 'agent', concat('agent-', toString(h2 % 300)),
       concat('conv-', toString(intDiv(toUnixTimestamp64Milli(occurred_at), 86400000) * 1000
                                 + h2 % 1000))) AS source_id,
    if(source = 'agent', concat('Agent ', toString(h2 % 300)),
       concat('Conversation about "topic" ', source_id)) AS source_name,
    ['claude-sonnet-4-5', 'claude-haiku-4-5', 'claude-opus-4-1'][1 + h % 3] AS model,
    h % 20000 AS input_tokens,
    h % 3000 AS output_tokens,
    (h % 7 = 0) * (h % 5000) AS cache_creation_input_tokens,
    (h % 3 = 0) * (h % 30000) AS cache_read_input_tokens,
    h % 50 != 0 AS priced,
    if(h2 % 5 = 0, 'batch', 'standard') AS service_tier,
    if(priced, CAST(cityHash64(number, 7) % 100000000 AS Decimal(38, 12)) / 1000000000000,
       toDecimal128(0, 12)) AS cost_usd,
    toUInt32(h % 60000) AS duration_ms,
    if(h % 97 = 0, 'error', 'ok') AS status,
    concat('req_', toString(number)) AS request_id,
    'bench' AS kafka_topic,
    0 AS kafka_partition,
    number AS kafka_offset,
    if(source = 'agent', map('customer', concat('customer-', toString(h2 % 40))),
       map('user', concat('user-', toString(h % 5000)),
           'customer', concat('customer-', toString(h2 % 40)))) AS attributes
FROM (SELECT number, cityHash64(number, 2) AS h, cityHash64(number, 3) AS h2
      FROM numbers({first:UInt64}, {count:UInt64}))
"""


def memory(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM (peak RSS) of ``pid`` in MiB."""
    found: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            found[name] = int(value.split()[0]) / 1024
    return found


class Sampler(threading.Thread):
    """The largest VmRSS of ``pid`` seen every 50 ms until stopped."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.max_rss = 0.0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            self.max_rss = max(self.max_rss, memory(self.pid)["VmRSS"])
            self.done.wait(0.05)

    def stop(self) -> float:
        self.done.set()
        self.join()
        return self.max_rss


def load(settings: Any, events: int, start_ms: int, span_ms: int, chunk: int) -> float:
    """Write ``events`` calls in chunks of ``chunk``; returns the seconds it took."""
    client = connect(settings, send_receive_timeout=3600)
    started = time.perf_counter()
    for first in range(0, events, chunk):
        count = min(chunk, events - first)
        client.command(
            LOAD_SQL,
            parameters={
                "tenant": TENANT,
                "start_ms": start_ms,
                "span_ms": span_ms,
                "events": events,
                "first": first,
                "count": count,
            },
            settings={"max_insert_threads": 1},
        )
        console.print(
            f"  loaded {first + count:,} calls ({time.perf_counter() - started:.0f}s)",
            highlight=False,
        )
    stored = int(client.query("SELECT count() FROM usage_events").result_rows[0][0])
    client.close()
    if stored != events:
        raise SystemExit(f"expected {events:,} calls, found {stored:,}")
    return time.perf_counter() - started


def check(path: Path, summary: dict[str, Any]) -> tuple[int, Decimal, list[str]]:
    """(rows, cost sum) of the downloaded file, and what differs from the summary."""
    rows, cost = 0, Decimal(0)
    with path.open(newline="", encoding="utf-8") as file:
        reader = csv.reader(file)
        header = next(reader)
        at = header.index("cost_usd")
        for row in reader:
            rows += 1
            cost += Decimal(row[at])
    problems = []
    if rows != summary["calls"]:
        problems.append(f"{rows:,} rows, but the summary counts {summary['calls']:,} calls")
    if cost != Decimal(summary["total_cost_usd"]):
        problems.append(f"the costs sum to {cost}, the summary says {summary['total_cost_usd']}")
    return rows, cost, problems


def run(*, events: int = 1_000_000, chunk: int = 1_000_000, keep: bool = False) -> dict[str, Any]:
    """Load ``events`` calls, download records.csv of all of them; returns the figures."""
    home = Path(tempfile.mkdtemp(prefix="llm-usage-bench-export-"))
    settings = throwaway_settings(
        home, clickhouse_database="bench_export", clickhouse_tcp_port=free_port()
    )
    stack = LocalStack(settings)
    api: subprocess.Popen[bytes] | None = None
    try:
        for shard in stack.shards:
            stack.start_service(shard.name)
        migrate(settings)
        end_ms = int(time.time() * 1000) // 1000 * 1000
        start_ms = end_ms - SPAN_DAYS * DAY_MS
        console.print(f"loading {events:,} calls into {settings.clickhouse_url} …")
        load_s = load(settings, events, start_ms, SPAN_DAYS * DAY_MS - 1000, chunk)

        port = free_port()
        api = start_api(settings, port, home / "api.log", workers=1)
        window = {
            "from": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(start_ms / 1000)),
            "to": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(end_ms / 1000)),
        }
        path = home / "records.csv"
        with httpx.Client(
            base_url=f"http://127.0.0.1:{port}",
            headers={"Authorization": f"Bearer {KEY}"},
            timeout=600,
        ) as http:
            summary = http.get("/v1/usage/summary", params=window).json()
            warm = http.get("/v1/usage/records.csv", params={"period": "24h"})  # warm-up
            if warm.status_code != 200:
                raise SystemExit(f"records.csv failed: {warm.status_code} {warm.text[:300]}")
            before = memory(api.pid)
            sampler = Sampler(api.pid)
            sampler.start()
            started = time.perf_counter()
            first_byte = None
            size = 0
            with (
                http.stream("GET", "/v1/usage/records.csv", params=window) as response,
                path.open("wb") as out,
            ):
                if response.status_code != 200:
                    raise SystemExit(f"records.csv failed: {response.status_code}")
                disposition = response.headers.get("content-disposition", "")
                for chunk_bytes in response.iter_raw(1024 * 1024):
                    if first_byte is None:
                        first_byte = time.perf_counter() - started
                    size += len(chunk_bytes)
                    out.write(chunk_bytes)
            seconds = time.perf_counter() - started
            during = sampler.stop()
            after = memory(api.pid)
        rows, cost, problems = check(path, summary)
        result = {
            "events": events,
            "load_seconds": round(load_s, 1),
            "rows": rows,
            "bytes": size,
            "seconds": round(seconds, 2),
            "first_byte_seconds": round(first_byte or 0.0, 2),
            "rows_per_s": round(rows / seconds),
            "mib_per_s": round(size / seconds / 2**20, 1),
            "api_rss_mib_before": round(before["VmRSS"], 1),
            "api_peak_rss_mib_before": round(before["VmHWM"], 1),
            "api_max_rss_mib_during": round(during, 1),
            "api_rss_mib_after": round(after["VmRSS"], 1),
            "api_peak_rss_mib_after": round(after["VmHWM"], 1),
            "cost_sum": str(cost),
            "summary_cost": summary["total_cost_usd"],
            "content_disposition": disposition,
        }
        console.print(
            f"records.csv: {rows:,} rows, {size / 2**20:,.1f} MiB in {seconds:.1f}s"
            f" ({rows / seconds:,.0f} rows/s, first byte after {first_byte or 0:.2f}s)\n"
            f"API peak RSS: {before['VmHWM']:.1f} MiB before, {after['VmHWM']:.1f} MiB after"
            f" (RSS {before['VmRSS']:.1f} -> {after['VmRSS']:.1f} MiB, at most"
            f" {during:.1f} MiB during the download)",
            highlight=False,
        )
        print(json.dumps(result, indent=2))
        if problems:
            raise SystemExit("the export does not match the summary:\n" + "\n".join(problems))
        console.print(
            f"{rows:,} rows = the summary's calls; their costs sum exactly to ${cost}",
            highlight=False,
        )
        return result
    finally:
        if api is not None:
            stop_api(api)
        for shard in stack.shards:
            stack.stop_service(shard.name)
        if keep:
            console.print(f"kept {home}")
        else:
            shutil.rmtree(home, ignore_errors=True)
