"""Measure the Usage page's load time in the browser with millions of calls in ClickHouse.

Not a test (pytest does not collect it): a script for the closing note of the page's issue.

    .venv/bin/python -m tests.browser.measure_page_load --events 10000000 --runs 7
    .venv/bin/python -m tests.browser.measure_page_load --bench-data DIR \
        --events 100000000 --runs 50 --load-clients 16

It starts its own ClickHouse server (chdb-core, as ``llm-usage stack up`` does) in
``test-output/page-load/`` on a free port, loads ``--events`` generated calls of one tenant
spread over the last 30 days (server-side ``INSERT ... SELECT``; kept between runs, so a
second run skips the load), serves the real API + page with uvicorn on a free port, and opens
the page in Debian's Chromium. For each period it reports, over ``--runs`` fresh browser
profiles (no cache), the time from navigation start until the last of the six panels
(cards, chart, donut, cost by model, top consumers, records) has rendered, and the slowest
API response the page waited for. Everything it started is stopped by PID at the end.

``--load-clients N`` measures under load: N more clients send the dashboard mix of
``llm-usage bench api`` to the same API the whole time (their throughput and p99 are printed
too). ``--bench-data DIR`` reuses the data of ``llm-usage bench api --data DIR`` (its
tenant and key) instead of loading this script's own.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from benchmarks import api as bench_api
from llm_usage.clickhouse import apply_migrations, connect
from llm_usage.clickhouse.migrations import MigrationError
from llm_usage.localstack import LocalStack
from llm_usage.localstack.processes import free_port
from llm_usage.settings import Settings, get_settings
from tests.browser.conftest import CHROMIUM, CHROMIUM_ARGS

ROOT = Path(__file__).resolve().parents[2]
KEY, TENANT = "page-load-key", "page-load"
PANELS = ["cards", "timeseries", "by-source", "by-model", "top", "records"]
CHUNK = 1_000_000

_GENERATE = """
INSERT INTO usage_events (event_id, tenant_id, occurred_at, source, source_id, source_name,
    model, input_tokens, output_tokens, cache_creation_input_tokens, cache_read_input_tokens,
    cost_usd, priced, duration_ms, status, kafka_topic, kafka_partition, kafka_offset)
SELECT
    generateUUIDv4(number),
    {tenant:String},
    now64(3) - toIntervalMillisecond(cityHash64(number, 1) % (30 * 86400000)),
    ['chat', 'agent', 'memory'][number % 3 + 1],
    concat('src-', toString(cityHash64(number, 2) % 5000)),
    concat(['Conversation ', 'Agent ', 'Memory of '][number % 3 + 1],
           toString(cityHash64(number, 2) % 5000)),
    'claude-sonnet-4-5',
    100 + cityHash64(number, 3) % 40000 AS in_tok,
    10 + cityHash64(number, 4) % 3000 AS out_tok,
    if(number % 5 = 0, 2000, 0),
    if(number % 2 = 0, 8000, 0),
    toDecimal128(in_tok, 12) * toDecimal128('0.000003', 12)
        + toDecimal128(out_tok, 12) * toDecimal128('0.000015', 12),
    true,
    300 + cityHash64(number, 5) % 40000,
    if(number % 97 = 0, 'error', 'ok'),
    'page-load', 0, number
FROM numbers({first:UInt64}, {count:UInt64})
"""


def load_events(settings: Settings, events: int) -> None:
    if settings.clickhouse_database == bench_api.DATABASE:
        have = int(str(connect(settings).command("SELECT count() FROM usage_events")))
        if have < events:
            raise SystemExit(f"the bench data holds {have:,} events, not {events:,}")
        apply_migrations(connect(settings, database=""), settings)
        print(f"{have:,} events of llm-usage bench api")
        return
    admin = connect(settings, database="")
    try:
        apply_migrations(admin, settings)
        have = int(str(connect(settings).command("SELECT count() FROM usage_events")))
    except MigrationError:  # kept from a run with older migrations
        have = -1
    if have == events:
        print(f"{have:,} events already loaded")
        return
    # start afresh: raw table and every rollup
    admin.command(f"DROP DATABASE IF EXISTS {settings.clickhouse_database} SYNC")
    apply_migrations(admin, settings)
    client = connect(settings)
    started = time.monotonic()
    for first in range(0, events, CHUNK):
        count = min(CHUNK, events - first)
        client.command(
            _GENERATE,
            parameters={"tenant": TENANT, "first": first, "count": count},
            settings={"max_execution_time": 0},
        )
        print(f"  loaded {first + count:,} events ({time.monotonic() - started:.0f} s)")
    client.command("OPTIMIZE TABLE usage_events FINAL")  # as after a quiet night of merges


def measure(base_url: str, runs: int, key: str) -> None:
    from playwright.sync_api import sync_playwright

    rows = []
    endpoints: list[tuple[str, dict[str, list[float]]]] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            for period in ("24h", "7d", "30d"):
                page_ms, api_ms = [], []
                per_endpoint: dict[str, list[float]] = {}
                for run in range(runs + 1):  # the first run warms ClickHouse's caches
                    ctx = browser.new_context(base_url=base_url, reduced_motion="reduce")
                    ctx.add_init_script(
                        f"localStorage.setItem('llmUsage.apiKey', '{key}');"
                        f"localStorage.setItem('llmUsage.period', '{period}');"
                    )
                    page = ctx.new_page()
                    page.goto("/")
                    page.wait_for_function(
                        "names => names.every(n => performance.getEntriesByName("
                        "'usage-panel-done:' + n).length)",
                        arg=PANELS,
                        timeout=120_000,
                    )
                    timing: dict[str, Any] = page.evaluate(
                        """() => ({
                          done: Math.max(...performance.getEntriesByType('mark')
                            .filter(m => m.name.startsWith('usage-panel-done:'))
                            .map(m => m.startTime)),
                          api: Math.max(...performance.getEntriesByType('resource')
                            .filter(r => r.name.includes('/v1/usage/'))
                            .map(r => r.duration)),
                          endpoints: Object.fromEntries(performance.getEntriesByType('resource')
                            .filter(r => r.name.includes('/v1/usage/'))
                            .map(r => [new URL(r.name).pathname.split('/').pop(), r.duration])),
                          calls: document.querySelector('#card-calls .value').dataset.value,
                        })"""
                    )
                    ctx.close()
                    if run:
                        page_ms.append(timing["done"])
                        api_ms.append(timing["api"])
                        for name, ms in timing["endpoints"].items():
                            per_endpoint.setdefault(name, []).append(ms)
                rows.append((period, int(timing["calls"]), page_ms, api_ms))
                endpoints.append((period, per_endpoint))
        finally:
            browser.close()
    print(f"\nUsage page load in Chromium, {runs} cold-profile loads per period")
    widths = {"period": 6, "calls in window": 16, "median ms": 10, "p99 ms": 8, "max ms": 8}
    print(" ".join(f"{name:>{width}}" for name, width in {**widths, "API max": 8}.items()))
    for period, calls, page_ms, api_ms in rows:
        print(
            f"{period:>6} {calls:>16,} {statistics.median(page_ms):>10.0f} "
            f"{bench_api.percentile(page_ms, 0.99):>8.0f} {max(page_ms):>8.0f} "
            f"{statistics.median(api_ms):>8.0f}"
        )
    print("(time from navigation start until all six panels have rendered; "
          "'API max' = median of the slowest /v1/usage call of each load)")  # fmt: skip
    print("\nmedian ms per endpoint, as the browser saw it (6 requests in parallel):")
    for period, per_endpoint in endpoints:
        cells = ", ".join(
            f"{name} {statistics.median(ms):.0f}" for name, ms in sorted(per_endpoint.items())
        )
        print(f"{period:>6}: {cells}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--home", type=Path, default=ROOT / "test-output" / "page-load")
    parser.add_argument("--bench-data", type=Path, help="the --data folder of bench api")
    parser.add_argument("--load-clients", type=int, default=0, help="API clients meanwhile")
    parser.add_argument("--api-workers", type=int, default=1, help="uvicorn workers")
    args = parser.parse_args()

    key, tenant, home, database = KEY, TENANT, args.home, "page_load"
    if args.bench_data:
        key, tenant, home = bench_api.KEY, bench_api.TENANT, args.bench_data
        database = bench_api.DATABASE
    settings = get_settings(
        home=home,
        clickhouse_url=f"http://127.0.0.1:{free_port()}",
        clickhouse_database=database,
        api_keys=f"{key}:{tenant}",
    )
    stack = LocalStack(settings)
    stack.start_service("clickhouse")
    api = None
    try:
        load_events(settings, args.events)
        port = free_port()
        api = bench_api.start_api(
            settings, port, home / "page-load-api.log", args.api_workers, keys=f"{key}:{tenant}"
        )
        base_url = f"http://127.0.0.1:{port}"
        with _background_load(base_url, args.load_clients, key):
            measure(base_url, args.runs, key)
    finally:
        if api is not None:
            bench_api.stop_api(api)
        stack.stop_service("clickhouse")


@contextmanager
def _background_load(base_url: str, clients: int, key: str) -> Iterator[None]:
    """``clients`` more API clients sending the bench's dashboard mix while the page loads;
    their throughput and latency are printed at the end."""
    if not clients:
        yield
        return
    stop = threading.Event()
    results: list[tuple[dict[Any, bench_api.Cell], float, int]] = []

    def run() -> None:
        drive = bench_api.drive(base_url, clients, 10**9, 3600, key=key, stop_when=stop)
        results.append(asyncio.run(drive))

    thread = threading.Thread(target=run, name="load", daemon=True)
    thread.start()
    time.sleep(2)  # let the load reach its pace before the first page load
    try:
        yield
    finally:
        stop.set()
        thread.join(120)
    for cells, wall, _ in results:
        every = [ms for cell in cells.values() for ms in cell.latencies]
        errors = sum(cell.errors for cell in cells.values())
        print(
            f"\nmeanwhile {clients} API clients: {len(every) + errors:,} requests in "
            f"{wall:.0f} s ({(len(every) + errors) / wall:.1f}/s), {errors} errors, "
            f"p50 {bench_api.percentile(every, 0.5):.0f} ms, "
            f"p99 {bench_api.percentile(every, 0.99):.0f} ms"
        )


if __name__ == "__main__":
    main()
