"""Reprice throughput (not a test): ``llm-usage reprice`` over N stored calls.

Starts its own ClickHouse (the local stack's server in a temporary home, on a free port),
loads N generated calls server-side with the API benchmark's generator (its costs are
random, so repricing them with the book changes almost every call: the worst case), then
runs one reprice over all of them and prints calls per second (of the first pass, and with
the catch-up passes, which wait 10 s for workers to settle), the time of each step, and a
check that the rollups equal the raw table afterwards.

    llm-usage bench reprice --events 10000000
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from benchmarks.api import load
from llm_usage.clickhouse import apply_migrations, connect
from llm_usage.localstack import LocalStack, throwaway_settings
from stream_processor.pricing import PriceBook
from stream_processor.reprice import Repricer, Selection


def run(*, events: int = 1_000_000, chunk: int = 1_000_000) -> None:
    """Load ``events`` calls (``chunk`` per insert), reprice them all, print the figures."""
    home = Path(tempfile.mkdtemp(prefix="bench-reprice-"))
    settings = throwaway_settings(
        home,
        clickhouse_database="bench_reprice",
    )
    stack = LocalStack(settings)
    stack.up()
    try:
        apply_migrations(connect(settings, database=""), settings)
        client = connect(settings, query_settings={"max_execution_time": 0})
        end_ms = int(datetime.now(UTC).timestamp() * 1000)
        load_s = load(client, events, end_ms, chunk)
        steps: dict[str, float] = {}
        mark = [time.monotonic()]

        def on_step(step: str) -> None:  # the first pass's steps (catch-up passes repeat them)
            now = time.monotonic()
            if "finished" not in steps:
                steps[step] = round(now - mark[0], 2)
            mark[0] = now

        repricer = Repricer(client, settings.clickhouse_database, PriceBook.load(),
                            on_step=on_step)  # fmt: skip
        started = mark[0] = time.monotonic()
        result = repricer.run(Selection())
        seconds = time.monotonic() - started
        first_pass = sum(steps.values())
        raw = client.query("SELECT count(), sum(cost_usd) FROM usage_events").result_rows[0]
        checks = {}
        for table in ("usage_hourly", "usage_daily", "usage_api_models_daily"):
            rolled = client.query(f"SELECT sum(calls), sum(cost_usd) FROM {table}").result_rows
            checks[table] = tuple(rolled[0]) == tuple(raw)
        print(json.dumps({
            "events": events,
            "load_seconds": round(load_s, 1),
            "reprice_seconds": round(seconds, 1),
            "first_pass_seconds": round(first_pass, 1),
            "scanned": result.scanned,
            "changed": result.changed,
            "calls_per_s_first_pass": round(result.scanned / first_pass),
            "calls_per_s_with_catch_up": round(result.scanned / seconds),
            "passes": result.passes,
            "step_seconds": steps,
            "rollups_equal_raw": checks,
        }, indent=2))  # fmt: skip
    finally:
        stack.down()
        shutil.rmtree(home, ignore_errors=True)
