"""Spike detection quality and cost (not a test): simulate's 7-day demo, many seeds.

Starts its own ClickHouse (the local stack's server in a temporary home), and for each seed
and size writes simulate's week straight into ``usage_events`` (priced with the worker's
book; the rollups fill as in production), runs one evaluation of the alerter over the whole
week (what a backfill gets), and prints per run: the injected spike found or missed, the
false spike alerts (no injected spike explains them), and how long the evaluation took.

    llm-usage bench alerts --seeds 42,1,2,3,4,5 --calls 10000,30000
"""

from __future__ import annotations

import itertools
import shutil
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from llm_usage.clickhouse import apply_migrations, connect
from llm_usage.localstack import LocalStack, throwaway_settings
from llm_usage.settings import Settings
from llm_usage.simulate import SimulationConfig, book_pricer, generate, write_calls
from query_api.db import ClickHouse
from stream_processor.alerts.evaluator import Evaluator
from stream_processor.pricing import PriceBook


def load_week(settings: Settings, cfg: SimulationConfig) -> list[dict[str, Any]]:
    """Write the week's unique calls; returns the manifest's injected spikes."""
    calls, spikes = [], {}
    for item in generate(cfg):
        if item.call is None or item.duplicate:
            continue
        calls.append(item.call)
        if item.spike is not None:
            spikes[(item.call.tenant_id, item.call.source_id)] = item.spike
    client = connect(settings)
    write_calls(client, calls, book_pricer(PriceBook.load()))
    client.close()
    return [
        {"tenant": t, "source_id": s, "start": a, "end": b} for (t, s), (a, b) in spikes.items()
    ]


def run(*, seeds: list[int], calls: list[int], ends_hours_ago: list[int]) -> None:
    """One alerter evaluation per (size, seed, end) week; prints found, missed and false."""
    home = Path(tempfile.mkdtemp(prefix="bench-alerts-"))
    base = throwaway_settings(
        home,
    )
    stack = LocalStack(base)
    stack.start_service("clickhouse")
    now = datetime.now(UTC).replace(microsecond=0)
    print(
        f"{'seed':>5} {'calls':>7} {'end':>11}  {'injected spike':<28} {'false':>5}  {'tick s':>6}"
    )
    totals = {"found": 0, "missed": 0, "false": 0, "runs": 0}
    try:
        for size, seed, ago in itertools.product(calls, seeds, ends_hours_ago):
            end = now - timedelta(hours=ago)
            database = f"alerts_{seed}_{size}_{ago}"
            settings = base.model_copy(update={"clickhouse_database": database})
            apply_migrations(connect(settings, database=""), settings)
            truth = load_week(settings, SimulationConfig(calls=size, days=7, seed=seed, end=end))
            evaluator = Evaluator(settings, ClickHouse(settings))
            began = time.monotonic()
            raised = evaluator.tick()
            took = time.monotonic() - began
            evaluator.close()
            started = [a for a in raised if a.kind == "spike_started"]

            def explains(alert: Any, spike: dict[str, Any]) -> bool:
                hour = spike["start"].replace(minute=0, second=0, microsecond=0)
                return (
                    alert.tenant_id == spike["tenant"]
                    and alert.source_id in (spike["source_id"], "")
                    and hour <= alert.window_start < spike["end"]
                )

            found = [s for s in truth if any(explains(a, s) and a.source_id for a in started)]
            false = [a for a in started if not any(explains(a, s) for s in truth)]
            label = f"{'found' if found else 'MISSED'} ({truth[0]['source_id']})"
            print(
                f"{seed:>5} {size:>7,} {end:%m-%d %H:%M}  {label:<28} {len(false):>5}  {took:>6.2f}"
            )
            for alert in false:
                print(f"{'':>15}false: {alert.message}")
            totals["found" if found else "missed"] += 1
            totals["false"] += len(false)
            totals["runs"] += 1
    finally:
        stack.down()
        shutil.rmtree(home, ignore_errors=True)
    print(
        f"\n{totals['runs']} weeks: injected spike found {totals['found']}, missed"
        f" {totals['missed']}; false spike alerts {totals['false']} in all"
    )
