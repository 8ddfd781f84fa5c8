"""Query API benchmark (not a test): latency over HTTP vs brute force over the raw table.

Starts its own ClickHouse (the local stack's chdb-core server, in a temporary home on a
free port), loads N generated events server-side (``INSERT ... SELECT FROM numbers()``, so
the materialized views fill every rollup as the worker's inserts would), runs the API in a
uvicorn subprocess and prints, per endpoint and window, p50/p99 latency over HTTP, the
brute-force aggregate's p50 over ``usage_events``, their ratio, and whether the numbers match.

    llm-usage bench api-rollups                 # 10 million events
    llm-usage bench api-rollups --events 1000000 --requests 20
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
from clickhouse_connect.driver.client import Client

from benchmarks.api import DAY_MS, KEY, TENANT, load, percentile, start_api
from llm_usage.clickhouse import apply_migrations, connect
from llm_usage.localstack import LocalStack, throwaway_settings
from llm_usage.localstack.processes import free_port, stop
from query_api.window import to_ms

PERIODS = {"24h": 1, "7d": 7, "30d": 30}


@dataclass(frozen=True)
class Options:
    """What ``llm-usage bench api-rollups`` was asked for."""

    events: int = 10_000_000
    chunk: int = 1_000_000  # events per INSERT
    requests: int = 30  # timed API calls per cell
    brute: int = 3  # timed brute-force runs per cell
    settle: bool = True  # measure again after merging the rollups (OPTIMIZE FINAL)
    keep: bool = False  # keep the temporary home


@dataclass
class Case:
    """One endpoint call and the brute-force SQL that computes the same thing from raw."""

    name: str
    path: str
    params: dict[str, Any]
    brute_sql: str
    check: Callable[[dict[str, Any], list[tuple[Any, ...]]], bool]


def _raw_where() -> str:
    return (
        "tenant_id = {t:String} AND occurred_at >= fromUnixTimestamp64Milli({a:Int64}, 'UTC')"
        " AND occurred_at < fromUnixTimestamp64Milli({b:Int64}, 'UTC')"
    )


def cases() -> list[Case]:
    where = _raw_where()
    sums = "count(), sum(input_tokens), sum(output_tokens), sum(cost_usd)"
    return [
        Case(
            "summary",
            "/v1/usage/summary",
            {},
            f"SELECT {sums} FROM usage_events WHERE {where}",
            lambda body, rows: (
                (body["calls"], Decimal(body["total_cost_usd"])) == (rows[0][0], rows[0][3])
            ),
        ),
        Case(
            "timeseries hour UTC",
            "/v1/usage/timeseries",
            {"granularity": "hour"},
            f"SELECT toStartOfHour(occurred_at) AS h, {sums} FROM usage_events WHERE {where}"
            " GROUP BY h ORDER BY h",
            lambda body, rows: sum(p["calls"] for p in body["points"]) == sum(r[1] for r in rows),
        ),
        Case(
            "timeseries day Kolkata",
            "/v1/usage/timeseries",
            {"granularity": "day", "tz": "Asia/Kolkata"},
            f"SELECT toDate(occurred_at, 'Asia/Kolkata') AS d, {sums} FROM usage_events"
            f" WHERE {where} GROUP BY d ORDER BY d",
            lambda body, rows: (
                [p["cost_usd"] for p in body["points"] if p["calls"]]
                == [f"{r[4]:.12f}" for r in rows]
            ),
        ),
        Case(
            "by-source",
            "/v1/usage/by-source",
            {},
            f"SELECT toString(source), {sums} FROM usage_events WHERE {where} GROUP BY source",
            lambda body, rows: (
                {s["source"]: s["calls"] for s in body["sources"]} == {r[0]: r[1] for r in rows}
            ),
        ),
        Case(
            "by-model",
            "/v1/usage/by-model",
            {},
            f"SELECT model, price_tier, count(), sum(cost_usd) FROM usage_events WHERE {where}"
            " GROUP BY model, price_tier"
            " ORDER BY sum(cost_usd) DESC, count() DESC, model, price_tier",
            lambda body, rows: (
                [
                    (i["model"], i["price_tier"], i["calls"], Decimal(i["cost_usd"]))
                    for i in body["items"]
                ]
                == rows
            ),
        ),
        Case(
            "top 10 by cost",
            "/v1/usage/top",
            {"by": "cost", "limit": 10},
            f"SELECT toString(source), source_id, sum(cost_usd) AS c FROM usage_events"
            f" WHERE {where} GROUP BY source, source_id ORDER BY c DESC, source, source_id"
            " LIMIT 10",
            lambda body, rows: (
                [(i["source_id"], Decimal(i["cost_usd"])) for i in body["items"]]
                == [(r[1], r[2]) for r in rows]
            ),
        ),
        Case(
            "records page 1",
            "/v1/usage/records",
            {"page": 1},
            f"SELECT toString(event_id), (SELECT count() FROM usage_events WHERE {where})"
            f" FROM usage_events WHERE {where} ORDER BY occurred_at DESC, event_id DESC LIMIT 20",
            lambda body, rows: (
                [i["event_id"] for i in body["items"]] == [r[0] for r in rows]
                and body["total"] == rows[0][1]
            ),
        ),
        Case(
            "records page 500",
            "/v1/usage/records",
            {"page": 500},
            f"SELECT toString(event_id) FROM usage_events WHERE {where}"
            " ORDER BY occurred_at DESC, event_id DESC LIMIT 20 OFFSET 9980",
            lambda body, rows: [i["event_id"] for i in body["items"]] == [r[0] for r in rows],
        ),
        Case(
            "records search",
            "/v1/usage/records",
            {"search": "agent 12"},
            "SELECT count() FROM usage_events WHERE "
            + where
            + " AND positionCaseInsensitiveUTF8(source_name, 'agent 12') > 0",
            lambda body, rows: body["total"] == rows[0][0],
        ),
    ]


ROLLUPS = (
    "usage_hourly", "usage_daily", "usage_api_15m", "usage_api_daily", "usage_api_models_15m",
    "usage_api_models_daily", "source_names",
)  # fmt: skip


def print_rollup_sizes(client: Client) -> None:
    for table in ROLLUPS:
        n = client.command(f"SELECT count() FROM {table}")
        print(f"  {table}: {n:,} rows")


def measure(http: httpx.Client, client: Client, args: Options) -> None:
    """Per case and period: API p50/p99 over HTTP, brute-force p50, ratio, exactness."""
    print(
        f"{'endpoint':<24}{'window':>7}{'api p50 ms':>12}{'api p99 ms':>12}"
        f"{'raw p50 ms':>12}{'raw/api':>9}  exact"
    )
    for case in cases():
        for period, days in PERIODS.items():
            latencies = []
            body: dict[str, Any] = {}
            for i in range(args.requests + 2):
                started = time.perf_counter()
                response = http.get(case.path, params={**case.params, "period": period})
                elapsed = time.perf_counter() - started
                if response.status_code != 200:
                    raise SystemExit(f"{case.name} {period}: {response.text}")
                if i >= 2:  # two warm-up calls
                    latencies.append(elapsed * 1000)
                body = response.json()
            window_end = to_ms(datetime.fromisoformat(body["to"]))
            params = {"t": TENANT, "a": window_end - days * DAY_MS, "b": window_end}
            raw_times: list[float] = []
            raw_rows: Sequence[Sequence[Any]] = []
            for _ in range(args.brute):
                started = time.perf_counter()
                raw_rows = client.query(case.brute_sql, parameters=params).result_rows
                raw_times.append((time.perf_counter() - started) * 1000)
            p50 = statistics.median(latencies)
            raw_p50 = statistics.median(raw_times)
            exact = "yes" if case.check(body, [tuple(r) for r in raw_rows]) else "NO"
            print(
                f"{case.name:<24}{period:>7}{p50:>12.1f}{percentile(latencies, 0.99):>12.1f}"
                f"{raw_p50:>12.1f}{raw_p50 / p50:>8.1f}x  {exact}",
                flush=True,
            )


def run(args: Options) -> None:
    home = Path(tempfile.mkdtemp(prefix="llm-usage-bench-"))
    settings = throwaway_settings(
        home,
        clickhouse_database="bench",
    )
    stack = LocalStack(settings)
    api: subprocess.Popen[bytes] | None = None
    try:
        stack.start_service("clickhouse")
        apply_migrations(connect(settings, database=""), settings)
        client = connect(settings, send_receive_timeout=3600)
        end_ms = int(time.time() * 1000)
        print(f"loading {args.events:,} events into {settings.clickhouse_url} ...", flush=True)
        seconds = load(client, args.events, end_ms, args.chunk)
        rows = client.command("SELECT count() FROM usage_events")
        tenant_rows = client.command(
            "SELECT count() FROM usage_events WHERE tenant_id = {t:String}",
            parameters={"t": TENANT},
        )
        print(f"loaded {rows:,} events ({tenant_rows:,} for tenant {TENANT}) in {seconds:.0f}s")
        print_rollup_sizes(client)

        port = free_port()
        api = start_api(settings, port, home / "api.log", workers=1)
        http = httpx.Client(
            base_url=f"http://127.0.0.1:{port}",
            headers={"Authorization": f"Bearer {KEY}"},
            timeout=120,
        )
        print("\nas loaded (rollup parts not yet merged):")
        measure(http, client, args)
        if args.settle:
            started = time.perf_counter()
            for table in ROLLUPS:
                client.command(f"OPTIMIZE TABLE {table} FINAL")
            print(
                f"\nafter merging the rollups ({time.perf_counter() - started:.0f}s, what"
                " background merges do over time):"
            )
            print_rollup_sizes(client)
            measure(http, client, args)
        http.close()
    finally:
        if api is not None:
            stop(api.pid, "uvicorn")
            api.wait(timeout=10)
        stack.stop_service("clickhouse")
        if args.keep:
            print(f"kept {home}")
        else:
            shutil.rmtree(home, ignore_errors=True)
