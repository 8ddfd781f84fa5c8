"""``llm-usage bench ...``: every benchmark behind one command group.

Each command only parses its options and calls the module's ``run``; the figures and their
format are the module's. Benchmarks live outside the shipped packages (the image has none):
``llm-usage bench`` works in a checkout installed with ``pip install -e .``.
"""

from __future__ import annotations

from pathlib import Path

import typer

bench_app = typer.Typer(help="Benchmarks that print figures (not tests).", no_args_is_help=True)


def _ints(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise typer.BadParameter(f"expected comma-separated integers, got {text!r}") from exc


@bench_app.command("publish")
def publish(
    events: int = typer.Option(200_000, "--events", min=1000, help="events per mode"),
    bootstrap: str | None = typer.Option(
        None, "--bootstrap", help="use this broker instead of starting one"
    ),
) -> None:
    """Publisher throughput in every mode (async, sync, codecs, spool, frozen broker)."""
    from benchmarks.publish import run

    run(events=events, bootstrap=bootstrap)


@bench_app.command("worker")
def worker(
    events: int = typer.Option(200_000, "--events", min=1000, help="events to catch up on"),
    per_message: int = typer.Option(200, "--per-message", min=1, help="events per Kafka message"),
    duplicates: int = typer.Option(0, "--duplicates", min=0, help="events published twice"),
    batch_max_events: int | None = typer.Option(
        None, "--batch-max-events", min=1, help="default: the worker's setting"
    ),
    stall_s: float = typer.Option(
        120.0, "--stall-s", min=1, help="give up when no row arrives for this long"
    ),
    attributes: bool = typer.Option(
        False, "--attributes", help="four attributes on every call (50,000 users)"
    ),
) -> None:
    """One worker catching up on a backlog: events/s and peak RSS."""
    from benchmarks.worker import run

    run(
        events=events,
        per_message=per_message,
        duplicates=duplicates,
        batch_max_events=batch_max_events,
        stall_s=stall_s,
        attributes=attributes,
    )


@bench_app.command("ingest")
def ingest(
    calls: int = typer.Option(100_000, "--calls", min=1000, help="events to push through"),
    workers: int = typer.Option(1, "--workers", min=1, help="stream-processor workers"),
    partitions: int = typer.Option(6, "--partitions", min=1, help="partitions of the calls topic"),
    shards: int = typer.Option(1, "--shards", min=1, max=8, help="ClickHouse shards"),
) -> None:
    """End-to-end ingest throughput and publish→queryable latency, vs a plain baseline."""
    from benchmarks.ingest import run

    run(calls=calls, workers=workers, partitions=partitions, shards=shards)


@bench_app.command("api")
def api(
    events: int = typer.Option(10_000_000, "--events", min=1000, help="events to generate"),
    clients: int = typer.Option(16, "--clients", min=1, max=256, help="concurrent HTTP clients"),
    requests: int = typer.Option(20_000, "--requests", min=1, help="stop after this many"),
    seconds: float = typer.Option(60.0, "--seconds", min=1, max=3600, help="or after this long"),
    chunk: int = typer.Option(1_000_000, "--chunk", min=1000, help="events per INSERT"),
    api_workers: int = typer.Option(1, "--api-workers", min=1, max=16, help="uvicorn workers"),
    keep: bool = typer.Option(False, "--keep", help="keep the temporary folder"),
    shards: int = typer.Option(1, "--shards", min=1, max=8, help="ClickHouse shards"),
    data: Path | None = typer.Option(
        None, "--data", help="keep the ClickHouse data here and reuse it on the next run"
    ),
    shape: str = typer.Option(
        "hourly", "--shape", help="conversations: hourly (100 new an hour) or daily (3 days)"
    ),
) -> None:
    """Load the query API with concurrent clients (own ClickHouse, loopback): p50/p99."""
    from benchmarks.api import run

    run(
        events=events,
        clients=clients,
        requests=requests,
        seconds=seconds,
        chunk=chunk,
        api_workers=api_workers,
        keep=keep,
        shards=shards,
        data=data,
        shape=shape,
    )


@bench_app.command("api-rollups")
def api_rollups(
    events: int = typer.Option(10_000_000, "--events", min=1000, help="events to generate"),
    chunk: int = typer.Option(1_000_000, "--chunk", min=1000, help="events per INSERT"),
    requests: int = typer.Option(30, "--requests", min=1, help="timed API calls per cell"),
    brute: int = typer.Option(3, "--brute", min=1, help="timed brute-force runs per cell"),
    settle: bool = typer.Option(
        True, "--settle/--no-settle", help="measure again after merging the rollups"
    ),
    keep: bool = typer.Option(False, "--keep", help="keep the temporary folder"),
) -> None:
    """Each endpoint over HTTP (one client) next to brute force over the raw table."""
    from benchmarks.api_rollups import Options, run

    run(
        Options(
            events=events, chunk=chunk, requests=requests, brute=brute, settle=settle, keep=keep
        )
    )


@bench_app.command("http-ingest")
def http_ingest(
    events: int = typer.Option(100_000, "--events", min=1000, help="events per mode"),
    clients: int = typer.Option(8, "--clients", min=1, max=256, help="concurrent HTTP clients"),
    ingest_workers: int = typer.Option(1, "--ingest-workers", min=1, max=16, help="uvicorn"),
) -> None:
    """POST /v1/events with 1, 100 and 1,000 events per request vs the Python publisher."""
    from benchmarks.http_ingest import run

    run(events=events, clients=clients, ingest_workers=ingest_workers)


@bench_app.command("reprice")
def reprice(
    events: int = typer.Option(1_000_000, "--events", min=1000, help="stored calls to reprice"),
    chunk: int = typer.Option(1_000_000, "--chunk", min=1000, help="rows per load insert"),
) -> None:
    """``llm-usage reprice`` over N stored calls: calls/s and the time of each step."""
    from benchmarks.reprice import run

    run(events=events, chunk=chunk)


@bench_app.command("export")
def export(
    events: int = typer.Option(1_000_000, "--events", min=1000, help="calls to export"),
    chunk: int = typer.Option(1_000_000, "--chunk", min=1000, help="calls per load INSERT"),
    keep: bool = typer.Option(False, "--keep", help="keep the temporary folder"),
) -> None:
    """records.csv of N calls: rows, bytes, seconds and the API's peak RSS before/after."""
    from benchmarks.export import run

    run(events=events, chunk=chunk, keep=keep)


@bench_app.command("alerts")
def alerts(
    seeds: str = typer.Option("42,1,2,3,4,5", "--seeds", help="comma-separated seeds"),
    calls: str = typer.Option("10000,30000", "--calls", help="comma-separated week sizes"),
    ends_hours_ago: str = typer.Option(
        "0", "--ends-hours-ago", help="weeks ending this many hours before now (comma-separated)"
    ),
) -> None:
    """Spike detection over simulate's demo weeks: injected spikes found, false alerts."""
    from benchmarks.alerts import run

    run(seeds=_ints(seeds), calls=_ints(calls), ends_hours_ago=_ints(ends_hours_ago))
