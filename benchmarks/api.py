"""``llm-usage bench api``: load the query API with concurrent clients over loopback.

Runs on its own throw-away ClickHouse (the local stack's chdb-core server on a free loopback
port, in a temporary folder): N events are generated *server-side* with
``INSERT ... SELECT FROM numbers()``, so the materialized views fill every rollup exactly as
the worker's inserts would, without pushing 10 million events through Kafka. The API then
runs as a real ``uvicorn`` child process, and C concurrent HTTP clients send a fixed mix of
dashboard requests (every endpoint, rolling 24h / 7d / 30d windows) until either the request
budget or the time budget is spent. Printed per endpoint and window: requests, errors,
throughput, p50 / p99 / max latency; then the totals.

Before the load, each endpoint's summary numbers are checked once against a brute-force
aggregate over ``usage_events`` (a fast wrong answer is not a result). Everything started is
stopped by PID at the end, and the folder is removed unless ``--keep``.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
from clickhouse_connect.driver.client import Client
from rich.console import Console
from rich.table import Table

from llm_usage.clickhouse import connect, migrate
from llm_usage.localstack import LocalStack, stack_settings
from llm_usage.localstack.processes import free_port, free_ports, stop
from llm_usage.settings import Settings

console = Console()

TENANT, KEY = "bench", "bench-key"
DATABASE = "bench_api"
DAY_MS = 86_400_000
SPAN_DAYS = 35
HOUR_MS = 3_600_000
# Conversation shapes: (how long one lives, how many are open at once). "hourly" is the
# worst case for the top list (100 new conversations an hour: with the memory calls on
# them, 144,000 entities in a 30-day window); in "daily" 1,000 conversations live 3 days
# each, as long chats and agents do.
SHAPES = {"hourly": (HOUR_MS, 100), "daily": (3 * DAY_MS, 1000)}
# The data runs this far past the load, so that runs in the next hours see a busy current
# hour, as a live system does.
LEAD_MS = 3 * HOUR_MS

# 80% of the calls belong to the benchmarked tenant (the rest to two others, so tenant
# filtering is real work), over the last 35 days in time order, as a live system writes them
# (so parts stay time-local), with a minute of jitter. Conversations follow a shape (see
# SHAPES) and there are 500 long-lived agents; costs with 12 decimals; 2% unpriced (mostly
# calls of two models the price book does not know); 20% batch and 10% fast calls; 6% with
# web searches (a tool cost of $0.01 each); 1% errors. Attributes: chat and memory calls
# have a user (one of 50,000, heavy-tailed), agent calls a feature, every call a customer
# (one of 40) and an environment (90% production). The price tier and the token cost
# are computed by ClickHouse from service_tier / speed and cost_usd - tool_cost_usd
# (MATERIALIZED columns).
LOAD_SQL = """
INSERT INTO usage_events (event_id, tenant_id, occurred_at, source, source_id, source_name,
    model, input_tokens, output_tokens, cache_creation_input_tokens, cache_read_input_tokens,
    priced, service_tier, speed, web_search_requests, tool_cost_usd, cost_usd,
    duration_ms, status, kafka_topic, kafka_partition, kafka_offset, attributes)
SELECT * EXCEPT (conversation, token_cost) FROM (SELECT
    generateUUIDv4(number) AS event_id,
    multiIf(h % 10 < 8, 'bench', h % 10 = 8, 'other-1', 'other-2') AS tenant_id,
    fromUnixTimestamp64Milli(toInt64({start_ms:Int64}
        + intDiv((number - {first:UInt64}) * {slice_ms:UInt64}, {count:UInt64})
        + cityHash64(number, 1) % 60000), 'UTC') AS occurred_at,
    multiIf(h2 % 10 < 6, 'chat', h2 % 10 < 9, 'agent', 'memory') AS source,
    intDiv(toUnixTimestamp64Milli(occurred_at), {conversation_ms:UInt64}) * {open:UInt64}
        + h3 % {open:UInt64} AS conversation,
    if(source = 'agent', concat('agent-', toString(h3 % 500)),
       concat('conv-', toString(conversation))) AS source_id,
    if(source = 'agent', concat('Agent ', toString(h3 % 500)),
       concat('Conversation about topic ', toString(conversation))) AS source_name,
    if(h % 50 = 0 AND h4 % 4 != 0, ['claude-future-9', 'acme-llm-2'][1 + h4 % 2],
       ['claude-sonnet-4-5', 'claude-haiku-4-5', 'claude-opus-4-1'][1 + h % 3]) AS model,
    h % 20000 AS input_tokens,
    h % 3000 AS output_tokens,
    (h % 7 = 0) * (h % 5000) AS cache_creation_input_tokens,
    (h % 3 = 0) * (h % 30000) AS cache_read_input_tokens,
    h % 50 != 0 AS priced,
    if(priced AND h4 % 10 IN (7, 8), 'batch', 'standard') AS service_tier,
    if(priced AND h4 % 10 = 9, 'fast', 'standard') AS speed,
    toUInt32(if(h4 % 17 = 0, 1 + h4 % 4, 0)) AS web_search_requests,
    if(priced, CAST(cityHash64(number, 7) % 100000000 AS Decimal(38, 12)) / 1000000000000,
       toDecimal128(0, 12)) AS token_cost,
    if(priced, CAST(web_search_requests AS Decimal(38, 12)) / 100,
       toDecimal128(0, 12)) AS tool_cost_usd,
    token_cost + tool_cost_usd AS cost_usd,
    toUInt32(h % 60000) AS duration_ms,
    if(h % 97 = 0, 'error', 'ok') AS status,
    'bench' AS kafka_topic,
    0 AS kafka_partition,
    number AS kafka_offset,
    if(source = 'agent',
       map('customer', concat('customer-', toString(h4 % 40)),
           'feature', ['search', 'summary', 'triage', 'report'][1 + h3 % 4],
           'environment', if(h2 % 10 = 9, 'staging', 'production')),
       map('user', concat('user-', toString(toUInt32(50000 * pow((h3 % 1000000) / 1e6, 3)))),
           'customer', concat('customer-', toString(h4 % 40)),
           'environment', if(h2 % 10 = 9, 'staging', 'production'))) AS attributes
FROM (SELECT number, cityHash64(number, 2) AS h, cityHash64(number, 3) AS h2,
             cityHash64(number, 4) AS h3, cityHash64(number, 5) AS h4
      FROM numbers({first:UInt64}, {count:UInt64})))
"""

PERIODS = ("24h", "7d", "30d")
# (name, path, extra parameters): what the Usage page asks for, plus the expensive corners.
ENDPOINTS: list[tuple[str, str, dict[str, Any]]] = [
    ("summary", "/v1/usage/summary", {}),
    ("timeseries hour", "/v1/usage/timeseries", {"granularity": "hour"}),
    ("timeseries day Kolkata", "/v1/usage/timeseries", {"granularity": "day",
                                                        "tz": "Asia/Kolkata"}),
    ("by-source", "/v1/usage/by-source", {}),
    ("by-model", "/v1/usage/by-model", {}),
    ("top 10 by cost", "/v1/usage/top", {"by": "cost", "limit": 10}),
    ("records page 1", "/v1/usage/records", {"page": 1}),
    ("records page 200", "/v1/usage/records", {"page": 200}),
    ("records search", "/v1/usage/records", {"search": "agent 12"}),
    ("summary agent", "/v1/usage/summary", {"source": "agent"}),
    ("timeseries hour chat", "/v1/usage/timeseries", {"granularity": "hour", "source": "chat"}),
    ("by-model memory", "/v1/usage/by-model", {"source": "memory"}),
    ("top 10 agent by tokens", "/v1/usage/top", {"by": "tokens", "limit": 10, "source": "agent"}),
    ("records page 1 chat", "/v1/usage/records", {"page": 1, "source": "chat"}),
    ("summary search", "/v1/usage/summary", {"search": "agent 12"}),
    ("top 10 search", "/v1/usage/top", {"search": "agent 12"}),
    ("breakdown attr.user", "/v1/usage/breakdown", {"by": "attr.user"}),
    ("breakdown model", "/v1/usage/breakdown", {"by": "model"}),
    ("summary attr.customer", "/v1/usage/summary", {"attr.customer": "customer-7"}),
    # the page's "click a customer, then group by user": two keys, so usage_events answers
    ("breakdown attr.user of one customer", "/v1/usage/breakdown",
     {"by": "attr.user", "attr.customer": "customer-7"}),
    ("attributes", "/v1/usage/attributes", {}),
]  # fmt: skip


@dataclass
class Cell:
    """Latencies (ms) and errors of one endpoint x window."""

    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    statuses: dict[int, int] = field(default_factory=lambda: defaultdict(int))


def percentile(samples: list[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..1); 0 for no samples."""
    if not samples:
        return 0.0
    ordered = sorted(samples)
    rank = max(1, min(len(ordered), int(-(-q * len(ordered) // 1))))
    return ordered[rank - 1]


def load(client: Client, events: int, end_ms: int, chunk: int, shape: str = "hourly") -> float:
    """Generate ``events`` rows server-side in chunks, in time order over the 35 days before
    ``end_ms``; returns the seconds it took."""
    started = time.perf_counter()
    span = SPAN_DAYS * DAY_MS
    for first in range(0, events, chunk):
        count = min(chunk, events - first)
        insert_calls(
            client,
            first=first,
            count=count,
            start_ms=end_ms - span + span * first // events,
            slice_ms=span * count // events,
            shape=shape,
        )
        console.print(
            f"  loaded {first + count:,} events ({time.perf_counter() - started:.0f}s)",
            highlight=False,
        )
    return time.perf_counter() - started


def insert_calls(
    client: Client, *, first: int, count: int, start_ms: int, slice_ms: int, shape: str
) -> None:
    """Calls ``first`` .. ``first + count`` spread in order over ``slice_ms`` from ``start_ms``."""
    conversation_ms, open_conversations = SHAPES[shape]
    client.command(
        LOAD_SQL,
        parameters={
            "start_ms": start_ms,
            "slice_ms": slice_ms,
            "first": first,
            "count": count,
            "conversation_ms": conversation_ms,
            "open": open_conversations,
        },
        settings={"max_insert_threads": 1},
    )


def start_api(
    settings: Settings, port: int, log: Path, workers: int, keys: str = f"{KEY}:{TENANT}"
) -> subprocess.Popen[bytes]:
    """The API under uvicorn on loopback, configured by LLM_USAGE_* variables only."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLM_USAGE_")}
    env.update({
        "LLM_USAGE_CLICKHOUSE_URL": settings.clickhouse_url,
        "LLM_USAGE_CLICKHOUSE_DATABASE": settings.clickhouse_database,
        "LLM_USAGE_CLICKHOUSE_CLUSTER": settings.clickhouse_cluster,
        "LLM_USAGE_CLICKHOUSE_SHARD_URLS": settings.clickhouse_shard_urls,
        "LLM_USAGE_API_KEYS": keys,
    })  # fmt: skip
    argv = [sys.executable, "-m", "uvicorn", "query_api.app:create_app", "--factory",
            "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
            "--no-access-log", "--workers", str(workers)]  # fmt: skip
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    stop_api(proc)
    raise SystemExit(f"the API did not become ready; see {log}")


def stop_api(proc: subprocess.Popen[bytes]) -> None:
    stop(proc.pid, "uvicorn")
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def check_exact(http: httpx.Client, client: Client) -> list[str]:
    """Each window's summary (with its unpriced models), by-source calls and cost by model
    and tier vs brute force over the raw table."""
    problems = []
    for period in PERIODS:
        body = http.get("/v1/usage/summary", params={"period": period}).json()
        params = {"t": TENANT, "a": body["from"], "b": body["to"]}
        where = (
            "tenant_id = {t:String} AND occurred_at >= parseDateTime64BestEffort({a:String}, 3)"
            " AND occurred_at < parseDateTime64BestEffort({b:String}, 3)"
        )
        calls, cost, tokens = client.query(
            f"SELECT count(), sum(cost_usd), sum(input_tokens) FROM usage_events WHERE {where}",
            parameters=params,
        ).result_rows[0]
        got = (body["calls"], Decimal(body["total_cost_usd"]), body["input_tokens"])
        if got != (calls, cost, tokens):
            problems.append(f"summary {period}: API {got} != raw {(calls, cost, tokens)}")
        unpriced = [
            (str(m), int(n))
            for m, n in client.query(
                f"SELECT model, countIf(NOT priced) AS n FROM usage_events WHERE {where}"
                " GROUP BY model HAVING n > 0 ORDER BY n DESC, model",
                parameters=params,
            ).result_rows
        ]
        got_unpriced = [(m["model"], m["calls"]) for m in body["unpriced_models"]]
        if got_unpriced != unpriced or body["cost_incomplete"] is not bool(unpriced):
            problems.append(f"summary {period}: unpriced models {got_unpriced} != {unpriced}")
        # the same window, explicitly: a second rolling request would end a moment later
        window = {"from": body["from"], "to": body["to"]}
        split = http.get("/v1/usage/by-source", params=window).json()
        if sum(s["calls"] for s in split["sources"]) != calls:
            problems.append(f"by-source {period}: calls do not add up to {calls}")
        models = http.get("/v1/usage/by-model", params=window).json()
        want = [
            (str(m), str(t), int(n), Decimal(c), Decimal(tool), int(u))
            for m, t, n, c, tool, u in client.query(
                "SELECT model, price_tier, count(), sum(cost_usd), sum(tool_cost_usd),"
                f" countIf(NOT priced) FROM usage_events WHERE {where}"
                " GROUP BY model, price_tier"
                " ORDER BY sum(cost_usd) DESC, count() DESC, model, price_tier",
                parameters=params,
            ).result_rows
        ]
        got_models = [
            (i["model"], i["price_tier"], i["calls"], Decimal(i["cost_usd"]),
             Decimal(i["tool_cost_usd"]), i["unpriced_calls"])
            for i in models["items"]
        ]  # fmt: skip
        if got_models != want:
            problems.append(f"by-model {period}: API {got_models} != raw {want}")
        problems += _check_breakdown(http, client, window, where, params, (calls, cost))
        if not {"batch", "fast"} <= {i[1] for i in want} or not unpriced:
            problems.append(f"{period}: the generated data lacks batch/fast or unpriced calls")
    return problems


def _check_breakdown(
    http: httpx.Client,
    client: Client,
    window: dict[str, str],
    where: str,
    params: dict[str, Any],
    total: tuple[int, Decimal],
) -> list[str]:
    """The breakdown by user: each user's group vs brute force, and every group (the
    calls without a user and ``other`` included) adding up to the window's total."""
    body = http.get("/v1/usage/breakdown", params={**window, "by": "attr.user"}).json()
    groups = body["groups"] + ([body["other"]] if body.get("other") else [])
    summed = (sum(g["calls"] for g in groups), sum(Decimal(g["cost_usd"]) for g in groups))
    problems = [] if summed == total else [f"breakdown: groups sum to {summed}, not {total}"]
    users = [g["key"] for g in body["groups"] if g["key"] is not None]
    want = {
        str(u): (int(n), Decimal(c))
        for u, n, c in client.query(
            f"SELECT attributes['user'] AS u, count(), sum(cost_usd) FROM usage_events"
            f" WHERE {where} AND u IN {{users:Array(String)}} GROUP BY u",
            parameters={**params, "users": users},
        ).result_rows
    }
    got = {g["key"]: (g["calls"], Decimal(g["cost_usd"])) for g in body["groups"] if g["key"]}
    if got != want or not users:
        problems.append(f"breakdown by attr.user: API {got} != raw {want}")
    return problems


LATE_EVENTS = 1_000


def check_late(http: httpx.Client, client: Client, first: int, shape: str) -> list[str]:
    """Late calls into hours the API has cached: the 30-day summary and top list must count
    them at once (compared with brute force over the raw table, same window)."""
    window = http.get("/v1/usage/summary", params={"period": "30d"}).json()
    window = {"from": window["from"], "to": window["to"]}
    for _ in range(2):  # cached on the first request, served from the cache on the second
        http.get("/v1/usage/summary", params=window)
        http.get("/v1/usage/top", params={**window, "limit": 10})
    insert_calls(
        client,
        first=first,
        count=LATE_EVENTS,
        start_ms=int(time.time() * 1000) - 20 * DAY_MS,
        slice_ms=3 * DAY_MS,
        shape=shape,
    )
    params = {"t": TENANT, "a": window["from"], "b": window["to"]}
    where = (
        "tenant_id = {t:String} AND occurred_at >= parseDateTime64BestEffort({a:String}, 3)"
        " AND occurred_at < parseDateTime64BestEffort({b:String}, 3)"
    )
    problems = []
    calls, cost = client.query(
        f"SELECT count(), sum(cost_usd) FROM usage_events WHERE {where}", parameters=params
    ).result_rows[0]
    body = http.get("/v1/usage/summary", params=window).json()
    if (body["calls"], Decimal(body["total_cost_usd"])) != (calls, cost):
        problems.append(f"late events: summary {body['calls']} calls != raw {calls}")
    want = [
        (str(s), str(i), Decimal(c))
        for s, i, c in client.query(
            f"SELECT source, source_id, sum(cost_usd) AS c FROM usage_events WHERE {where}"
            " GROUP BY source, source_id ORDER BY c DESC, source, source_id LIMIT 10",
            parameters=params,
        ).result_rows
    ]
    top = http.get("/v1/usage/top", params={**window, "limit": 10}).json()["items"]
    got = [(i["source"], i["source_id"], Decimal(i["cost_usd"])) for i in top]
    if got != want:
        problems.append(f"late events: top 10 {got} != raw {want}")
    return problems


async def drive(
    base_url: str,
    clients: int,
    max_requests: int,
    seconds: float,
    *,
    key: str = KEY,
    stop_when: threading.Event | None = None,
) -> tuple[dict[tuple[str, str], Cell], float, int]:
    """``clients`` concurrent loops over the request mix until either budget is spent
    (or ``stop_when`` is set)."""
    cells: dict[tuple[str, str], Cell] = defaultdict(Cell)
    mix = itertools.cycle(itertools.product(ENDPOINTS, PERIODS))
    issued = 0
    deadline = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    async with httpx.AsyncClient(
        base_url=base_url, headers={"Authorization": f"Bearer {key}"}, timeout=60, limits=limits
    ) as http:

        async def one_client() -> None:
            nonlocal issued
            while issued < max_requests and time.monotonic() < deadline:
                if stop_when is not None and stop_when.is_set():
                    return
                issued += 1
                (name, path, params), period = next(mix)
                cell = cells[(name, period)]
                started = time.perf_counter()
                try:
                    response = await http.get(path, params={**params, "period": period})
                    status = response.status_code
                except httpx.HTTPError:
                    status = 0
                elapsed = (time.perf_counter() - started) * 1000
                cell.statuses[status] += 1
                if status == 200:
                    cell.latencies.append(elapsed)
                else:
                    cell.errors += 1

        started = time.perf_counter()
        await asyncio.gather(*(one_client() for _ in range(clients)))
        wall = time.perf_counter() - started
    return cells, wall, issued


def report(cells: dict[tuple[str, str], Cell], wall: float, events: int, clients: int) -> dict[
    str, Any
]:  # fmt: skip
    table = Table(
        title=f"API under load: {events:,} events, {clients} concurrent clients, {wall:.1f}s"
    )
    for column in ("endpoint", "window", "requests", "errors", "req/s", "p50 ms", "p99 ms",
                   "max ms"):  # fmt: skip
        table.add_column(column, justify="left" if column in ("endpoint", "window") else "right")
    rows = []
    per_endpoint: dict[str, Cell] = defaultdict(Cell)
    for (name, _, _), period in itertools.product(ENDPOINTS, PERIODS):
        cell = cells.get((name, period), Cell())
        agg = per_endpoint[name]
        agg.latencies.extend(cell.latencies)
        agg.errors += cell.errors
        n = len(cell.latencies) + cell.errors
        row = {
            "endpoint": name, "window": period, "requests": n, "errors": cell.errors,
            "rps": n / wall if wall else 0.0, "p50_ms": percentile(cell.latencies, 0.5),
            "p99_ms": percentile(cell.latencies, 0.99),
            "max_ms": max(cell.latencies, default=0.0),
        }  # fmt: skip
        rows.append(row)
        table.add_row(name, period, str(n), str(cell.errors), f"{row['rps']:.1f}",
                      f"{row['p50_ms']:.1f}", f"{row['p99_ms']:.1f}",
                      f"{row['max_ms']:.1f}")  # fmt: skip
    table.add_section()
    endpoint_rows = []
    for name, agg in per_endpoint.items():
        n = len(agg.latencies) + agg.errors
        endpoint_rows.append({
            "endpoint": name, "requests": n, "errors": agg.errors, "rps": n / wall,
            "p50_ms": percentile(agg.latencies, 0.5), "p99_ms": percentile(agg.latencies, 0.99),
        })  # fmt: skip
        table.add_row(name, "all", str(n), str(agg.errors), f"{n / wall:.1f}",
                      f"{percentile(agg.latencies, 0.5):.1f}",
                      f"{percentile(agg.latencies, 0.99):.1f}",
                      f"{max(agg.latencies, default=0.0):.1f}")  # fmt: skip
    every = [ms for c in cells.values() for ms in c.latencies]
    errors = sum(c.errors for c in cells.values())
    total = len(every) + errors
    if errors:
        failed: dict[int, int] = defaultdict(int)
        for cell in cells.values():
            for status, n in cell.statuses.items():
                if status != 200:
                    failed[status] += n
        console.print(f"errors by HTTP status (0: no answer): {dict(failed)}", highlight=False)
    table.add_section()
    table.add_row("all endpoints", "all", str(total), str(errors), f"{total / wall:.1f}",
                  f"{percentile(every, 0.5):.1f}", f"{percentile(every, 0.99):.1f}",
                  f"{max(every, default=0.0):.1f}")  # fmt: skip
    console.print(table, width=max(console.width, 110))
    return {
        "events": events, "clients": clients, "seconds": round(wall, 2), "requests": total,
        "errors": errors, "requests_per_s": round(total / wall, 1) if wall else 0.0,
        "p50_ms": round(percentile(every, 0.5), 1), "p99_ms": round(percentile(every, 0.99), 1),
        "per_endpoint": [{k: round(v, 1) if isinstance(v, float) else v for k, v in r.items()}
                         for r in endpoint_rows],
    }  # fmt: skip


def run(
    *,
    events: int = 10_000_000,
    clients: int = 16,
    requests: int = 20_000,
    seconds: float = 60.0,
    chunk: int = 1_000_000,
    api_workers: int = 1,
    keep: bool = False,
    shards: int = 1,
    data: Path | None = None,
    shape: str = "hourly",
) -> dict[str, Any]:
    """Load ``events``, then drive the API; returns the figures (also printed as JSON).

    With ``data`` the ClickHouse folder lives there and outlives the run: a later run with
    the same ``data``, ``events`` and ``shape`` skips the load (100 million events take
    ~4 minutes), so two versions of the API can be measured on the same data, side by side.
    """
    if shape not in SHAPES:
        raise SystemExit(f"unknown --shape {shape!r}; use one of {', '.join(SHAPES)}")
    home = data or Path(tempfile.mkdtemp(prefix="llm-usage-bench-api-"))
    home.mkdir(parents=True, exist_ok=True)
    ports = free_ports(2 * shards)  # HTTP ports of the shards, then their native ports
    settings = Settings(
        home=home,
        kafka_bootstrap=f"127.0.0.1:{free_port()}",  # unused: no broker is started
        clickhouse_url=f"http://127.0.0.1:{ports}",
        clickhouse_tcp_port=ports + shards,
        clickhouse_shards=shards,
        clickhouse_database=DATABASE,
    )  # type: ignore[call-arg]
    stack = LocalStack(settings)
    api: subprocess.Popen[bytes] | None = None
    try:
        for shard in stack.shards:
            stack.start_service(shard.name)
        settings = stack_settings(settings)  # a cluster of the shards when there are several
        migrate(settings)
        client = connect(settings, send_receive_timeout=3600)
        rows = int(client.query("SELECT count() FROM usage_events").result_rows[0][0])
        load_s = 0.0
        marker = home / "bench-data.json"
        want = {"events": events, "shape": shape}
        if rows and marker.exists() and json.loads(marker.read_text()) == want:
            console.print(f"reusing the {rows:,} events in {home} (late ones of earlier runs)")
        elif rows:
            raise SystemExit(f"{home} holds other data ({rows:,} events): use another --data")
        else:
            console.print(f"generating {events:,} {shape} events in {settings.clickhouse_url} …")
            load_s = load(client, events, int(time.time() * 1000) + LEAD_MS, chunk, shape)
            marker.write_text(json.dumps(want))
            rows = int(client.query("SELECT count() FROM usage_events").result_rows[0][0])
            if rows != events:
                raise SystemExit(f"expected {events:,} rows, found {rows:,}")
            console.print(f"loaded {rows:,} events in {load_s:.0f}s ({rows / load_s:,.0f}/s)")

        port = free_port()
        api = start_api(settings, port, home / "api.log", api_workers)
        base_url = f"http://127.0.0.1:{port}"
        with httpx.Client(
            base_url=base_url, headers={"Authorization": f"Bearer {KEY}"}, timeout=120
        ) as http:
            problems = check_exact(http, client)
            for (_, path, params), period in itertools.product(ENDPOINTS, PERIODS):
                warm = http.get(path, params={**params, "period": period})  # one warm-up each
                if warm.status_code != 200:
                    problems.append(f"{path} {params} {period}: {warm.status_code} {warm.text}")
        if problems:
            raise SystemExit("the API is not exact or not healthy:\n" + "\n".join(problems))
        console.print(
            "summary, by-source and by-model equal brute force over usage_events (24h/7d/30d)"
        )
        console.print(
            f"driving {base_url} with {clients} clients: at most {requests:,} requests"
            f" or {seconds:.0f}s …"
        )
        cells, wall, _ = asyncio.run(drive(base_url, clients, requests, seconds))
        result = report(cells, wall, events, clients)
        result.update(load_seconds=round(load_s, 1), api_workers=api_workers)
        with httpx.Client(
            base_url=base_url, headers={"Authorization": f"Bearer {KEY}"}, timeout=300
        ) as http:
            late = check_late(http, client, first=rows, shape=shape)
        if late:
            raise SystemExit("the API is not exact after late events:\n" + "\n".join(late))
        console.print(
            f"{LATE_EVENTS:,} late calls into cached hours: the 30-day summary and top 10"
            " equal brute force at once"
        )
        print(json.dumps(result))
        return result
    finally:
        if api is not None:
            stop_api(api)
        for shard in stack.shards:
            stack.stop_service(shard.name)
        if keep or data is not None:
            console.print(f"kept {home}")
        else:
            shutil.rmtree(home, ignore_errors=True)
