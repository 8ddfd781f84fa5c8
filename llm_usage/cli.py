"""The ``llm-usage`` command: local stack, migrations, and (later) worker, API and tools."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.table import Table

from llm_usage.localstack.stack import ServiceStatus
from llm_usage.settings import Settings, get_settings

if TYPE_CHECKING:
    from query_api.keys import KeyStore
    from stream_processor.pricing import PriceBook, Rates

app = typer.Typer(help="LLM usage analytics pipeline.", no_args_is_help=True)
stack_app = typer.Typer(help="The local Kafka broker and ClickHouse server.", no_args_is_help=True)
app.add_typer(stack_app, name="stack")
console = Console()
PIPED_TABLE_WIDTH = 250  # a table piped to grep or a file is not cut to 80 columns


def print_table(table: Table) -> None:
    (console if console.is_terminal else Console(width=PIPED_TABLE_WIDTH)).print(table)


def _print_status(statuses: list[ServiceStatus]) -> None:
    for s in statuses:
        state = "[green]up[/green]  " if s.running else "[red]down[/red]"
        console.print(
            f"{s.name:<24} {state} pid {s.pid or '-':<8} {s.address:<24} {s.detail}  log {s.log}",
            soft_wrap=True,
        )


def pipeline_settings() -> Settings:
    """The environment's settings, completed with the local stack's cluster when it runs
    sharded (``stack up --shards N``); exported too, so child processes agree."""
    import os

    from llm_usage.localstack import stack_settings

    settings = stack_settings(get_settings())
    if settings.shard_urls and not os.environ.get("LLM_USAGE_CLICKHOUSE_SHARD_URLS"):
        os.environ["LLM_USAGE_CLICKHOUSE_CLUSTER"] = settings.clickhouse_cluster
        os.environ["LLM_USAGE_CLICKHOUSE_SHARD_URLS"] = settings.clickhouse_shard_urls
    return settings


@stack_app.command("up")
def stack_up(
    shards: int = typer.Option(
        None, "--shards", min=1, max=8, help="ClickHouse servers, one per shard (default 1)"
    ),
) -> None:
    """Start the broker and ClickHouse in the background (idempotent)."""
    from llm_usage.localstack import LocalStack
    from llm_usage.localstack.stack import StackError

    started = time.monotonic()
    settings = get_settings()
    if shards is not None:
        settings = settings.model_copy(update={"clickhouse_shards": shards})
    stack = LocalStack(settings)
    try:
        statuses = stack.up()
    except StackError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from exc
    _print_status(statuses)
    console.print(f"ready in {time.monotonic() - started:.2f}s; state in {stack.state_file}")
    if stack.cluster is not None:
        name, urls = stack.cluster
        console.print(f"cluster {name}: {len(urls)} shards; `llm-usage migrate`, `worker`, `api`,"
                      " `ingest` and `run` use it (LLM_USAGE_CLICKHOUSE_CLUSTER and"
                      " LLM_USAGE_CLICKHOUSE_SHARD_URLS say so explicitly)")  # fmt: skip


@stack_app.command("status")
def stack_status() -> None:
    """Show what runs where; exit code 1 if a service is down."""
    from llm_usage.localstack import LocalStack

    statuses = LocalStack(get_settings()).status()
    _print_status(statuses)
    if not all(s.running for s in statuses):
        raise typer.Exit(1)


@stack_app.command("down")
def stack_down() -> None:
    """Stop exactly the processes `stack up` started. ClickHouse data is kept."""
    from llm_usage.localstack import LocalStack

    stopped = LocalStack(get_settings()).down()
    console.print(f"stopped: {', '.join(stopped) or 'nothing was running'}")


@app.command()
def migrate() -> None:
    """Apply pending ClickHouse migrations in order (idempotent)."""
    from llm_usage.clickhouse import migrate as apply_all
    from llm_usage.clickhouse.migrations import MigrationError

    settings = pipeline_settings()
    try:
        applied, ttl_changed = apply_all(settings)
    except MigrationError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from exc
    for migration in applied:
        console.print(f"applied {migration.path.name}")
    if ttl_changed:
        console.print(f"usage_events TTL set to {settings.raw_retention_days} days")
    if not applied:
        console.print(f"database {settings.clickhouse_database} is up to date")


@app.command("settings")
def show_settings() -> None:
    """Every setting: its LLM_USAGE_ variable, current value (secrets hidden) and meaning."""
    from pydantic import SecretStr

    from llm_usage.settings import Settings

    current = get_settings()
    for name, field in Settings.model_fields.items():
        value = getattr(current, name)
        secret = isinstance(value, SecretStr) or "password" in name or name == "api_keys"
        shown = ("***" if value else "") if secret else value
        about = field.description or ""
        console.print(f"LLM_USAGE_{name.upper():<36} {shown!s:<28} {about}", soft_wrap=True)


# --- producers commands (issue 3) ----------------------------------------------------------
@app.command()
def topics() -> None:
    """Create the pipeline's Kafka topics that are missing (LLM_USAGE_TOPIC_PARTITIONS)."""
    import asyncio

    from producers.topics import ensure_topics, pipeline_topics

    settings = get_settings()
    created = asyncio.run(ensure_topics(settings))
    for topic in pipeline_topics(settings):
        state = "created" if topic in created else "exists"
        console.print(f"{topic:<32} {state}")


@app.command("replay-spool")
def replay_spool(
    name: str = typer.Option("default", help="spool name (LLM_USAGE_PRODUCER_SPOOL_NAME)"),
    timeout: float = typer.Option(300.0, help="give up after this many seconds"),
) -> None:
    """Send a stopped service's spooled events to Kafka now (services do it on start)."""
    import asyncio

    from producers.publisher import UsagePublisher

    async def run() -> dict[str, object]:
        async with UsagePublisher(get_settings(producer_spool_name=name)) as pub:
            if not await pub.wait_replayed(timeout):
                console.print(f"[red]spool not empty after {timeout:.0f}s[/red]")
            return pub.snapshot()

    stats = asyncio.run(run())
    console.print(f"replayed {stats['replayed']} events; {stats['spool_bytes']} bytes left")
    if stats["spool_bytes"]:
        raise typer.Exit(1)


# --- stream processor commands (issue 4) ---------------------------------------------------


@app.command()
def worker() -> None:
    """Run one stream-processor worker (Faust) until SIGTERM; see README "Stream processor"."""
    from stream_processor.worker import run

    run(pipeline_settings())


@app.command()
def alerter() -> None:
    """Judge new usage for spikes and budgets; raise alerts (topic, ClickHouse, webhooks)."""
    from stream_processor.alerts.evaluator import run_alerter

    run_alerter(pipeline_settings())


prices_app = typer.Typer(
    help="The price book: list it, regenerate it from the price library, check SDK coverage.",
    invoke_without_command=True,
)
app.add_typer(prices_app, name="prices")


def _load_book() -> PriceBook:
    from stream_processor.pricing import PriceBook, PriceBookError

    try:
        return PriceBook.load(overrides=get_settings().price_overrides)
    except PriceBookError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from exc


def _rates_text(rates: Rates) -> str:
    from stream_processor.pricing.book import PRICE_FIELDS

    return "/".join(str(getattr(rates, name)) for name in PRICE_FIELDS)


@prices_app.callback()
def prices(
    ctx: typer.Context,
    model: str = typer.Option("", help="only models whose name or alias contains this"),
    at: str = typer.Option("", help="YYYY-MM-DD: the entries in force that day (default today)"),
    all_entries: bool = typer.Option(False, "--all", help="every dated entry, not just one"),
) -> None:
    """List the price book (and your overrides): USD per million tokens, by model and date.

    Rates read input/output/5m cache write/1h cache write/cache read.
    """
    if ctx.invoked_subcommand is not None:
        return
    from datetime import UTC, date, datetime

    book = _load_book()
    day = date.fromisoformat(at) if at else datetime.now(UTC).date()
    moment = datetime(day.year, day.month, day.day, tzinfo=UTC)
    title = f"price book {book.book_version} ({book.source}), USD per MTok"
    if book.overrides_source:
        title += f", overrides {book.overrides_source}"
    table = Table(title=title)
    for column in ("model", "provider", "from", "standard", "long context", "batch", "fast",
                   "web search /1k", "geo", "aliases"):  # fmt: skip
        table.add_column(column)
    needle = model.lower()
    for name in book.models():
        aliases = book.aliases(name)
        if needle and needle not in name and not any(needle in a for a in aliases):
            continue
        chosen = book.entry(name, moment)
        for entry in book.entries[name] if all_entries else [chosen]:
            if entry is None:
                continue
            std = entry.tiers["standard"]
            long_text = (
                f">{std.long_context_above:,}: {_rates_text(std.long_context)}"
                if std.long_context is not None and std.long_context_above is not None
                else ""
            )
            batch, fast = entry.tiers.get("batch"), entry.tiers.get("fast")
            geo = ", ".join(f"{k} x{v}" for k, v in entry.geo_multipliers.items())
            label = f"{name} [yellow](override)[/yellow]" if entry.override else name
            table.add_row(
                label, entry.provider, entry.version, _rates_text(std.base), long_text,
                _rates_text(batch.base) if batch else "", _rates_text(fast.base) if fast else "",
                str(entry.web_search_per_1k or ""), geo, ", ".join(aliases),
            )  # fmt: skip
    print_table(table)


@prices_app.command("import")
def prices_import(
    check: bool = typer.Option(False, help="only check: exit 1 if the file would change"),
) -> None:
    """Regenerate prices.json from the pinned price library (genai-prices) and supplement.json.

    Prints the change as a diff to review and commit. Nothing is fetched from the internet.
    """
    import difflib

    from stream_processor.pricing import DEFAULT_BOOK
    from stream_processor.pricing.importer import library_version, regenerate

    old, new = regenerate()
    diff = list(difflib.unified_diff(old.splitlines(), new.splitlines(), "prices.json (before)",
                                     "prices.json (imported)", lineterm=""))  # fmt: skip
    for line in diff:
        console.print(line, markup=False, highlight=False, soft_wrap=True)
    source = f"genai-prices {library_version()}"
    if not diff:
        console.print(f"prices.json is up to date with {source}")
        return
    if check:
        console.print(
            f"[red]prices.json differs from {source}[/red]: run `llm-usage prices import`"
        )
        raise typer.Exit(1)
    DEFAULT_BOOK.write_text(new)
    console.print(f"wrote {DEFAULT_BOOK} from {source}: review the diff above and commit it")


@prices_app.command("check")
def prices_check() -> None:
    """Exit 1 if the installed anthropic SDK names a model the book cannot price."""
    import anthropic

    from stream_processor.pricing.coverage import sdk_models, unpriced_models

    book = _load_book()
    names = sdk_models()
    missing = unpriced_models(book, names)
    for name in missing:
        console.print(f"[red]unpriced:[/red] {name}")
    if missing:
        console.print(
            f"{len(missing)} of {len(names)} models of anthropic {anthropic.__version__} have "
            "no price: add them (supplement.json or overrides), then `llm-usage prices import`"
        )
        raise typer.Exit(1)
    console.print(f"all {len(names)} models of anthropic {anthropic.__version__} are priced")


@app.command()
def reprice(
    model: list[str] = typer.Option([], "--model", help="only this model (repeatable)"),
    tenant: str = typer.Option(None, help="only this tenant"),
    from_day: str = typer.Option(None, "--from", help="YYYY-MM-DD: first UTC day (inclusive)"),
    to_day: str = typer.Option(None, "--to", help="YYYY-MM-DD: last UTC day (inclusive)"),
    dry_run: bool = typer.Option(False, "--dry-run", help="print the changes, change nothing"),
) -> None:
    """Reprice stored calls with the current book and overrides, rollups included.

    Safe to interrupt and run again (it completes an interrupted run first) and while
    workers ingest. See README "Reprice stored calls".
    """
    from datetime import date

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    from llm_usage.clickhouse import connect
    from stream_processor.reprice import Repricer, Selection

    settings = pipeline_settings()
    try:
        first = date.fromisoformat(from_day) if from_day else None
        last = date.fromisoformat(to_day) if to_day else None
    except ValueError as exc:
        console.print(f"[red]error:[/red] --from/--to: {exc}")
        raise typer.Exit(2) from exc
    client = connect(settings)
    try:
        repricer = Repricer(client, settings.clickhouse_database, _load_book())
        selection = Selection(repricer.stored_names(model) if model else (), tenant, first, last)
        total = repricer.count(selection)
        columns = (BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
        with Progress("{task.description}", *columns, console=console) as bar:
            task = bar.add_task("pricing stored calls", total=total)

            def advance(done: int) -> None:
                bar.update(task, completed=done)

            if dry_run:
                changes = repricer.dry_run(selection, advance)
            else:
                result = repricer.run(selection, advance)
    finally:
        client.close()
    if dry_run:
        table = Table(title=f"reprice --dry-run: {total:,} stored calls, nothing changed")
        for column in ("model", "calls", "changed", "old cost (USD)", "new cost (USD)", "diff"):
            table.add_column(column, justify="left" if column == "model" else "right")
        for name, item in sorted(changes.items()):
            table.add_row(name, f"{item.calls:,}", f"{item.changed:,}", f"{item.old_cost:f}",
                          f"{item.new_cost:f}", f"{item.new_cost - item.old_cost:+f}")  # fmt: skip
        print_table(table)
        return
    rate = result.scanned / result.seconds if result.seconds else 0.0
    if result.resumed:
        console.print("completed an interrupted reprice run first")
    console.print(
        f"repriced {result.changed:,} of {result.scanned:,} calls in {result.seconds:.1f}s "
        f"({rate:,.0f} calls/s, {result.passes} passes): "
        f"${result.old_cost:f} -> ${result.new_cost:f} (run {result.run_id})"
    )


# --- query API commands (issue 5, 6) -------------------------------------------------------


@app.command()
def api(
    port: int = typer.Option(None, help="port (default LLM_USAGE_API_PORT, 8000)"),
    host: str = typer.Option(None, help="address (default LLM_USAGE_API_HOST, 127.0.0.1)"),
) -> None:
    """Serve the query API (and the Usage page) with uvicorn."""
    import uvicorn

    from query_api.app import create_app

    settings = pipeline_settings()
    if not settings.api_key_tenants:
        console.print("[yellow]warning:[/yellow] LLM_USAGE_API_KEYS is empty: every call is 401")
    uvicorn.run(
        create_app(settings),
        host=host or settings.api_host,
        port=port or settings.api_port,
        log_level="info",
    )


@app.command()
def ingest(
    port: int = typer.Option(None, help="port (default LLM_USAGE_INGEST_PORT, 4318)"),
    host: str = typer.Option(None, help="address (default LLM_USAGE_INGEST_HOST, 127.0.0.1)"),
    workers: int = typer.Option(1, "--workers", min=1, max=64, help="uvicorn processes"),
) -> None:
    """Serve the ingest API: POST /v1/events (contract JSON) and /v1/traces (OTLP/HTTP)."""
    import uvicorn

    settings = pipeline_settings()
    # No access log: one line per request costs more than a small request itself. Each
    # worker process builds its app from the same LLM_USAGE_* environment.
    uvicorn.run(
        "query_api.ingest.app:create_ingest_app",
        factory=True,
        host=host or settings.ingest_host,
        port=port or settings.ingest_port,
        workers=workers,
        access_log=False,
        log_level="info",
    )


keys_app = typer.Typer(
    help="API keys: a tenant and scopes each, stored hashed.", no_args_is_help=True
)
app.add_typer(keys_app, name="keys")


def _key_store() -> KeyStore:
    from llm_usage.clickhouse import connect
    from query_api.keys import ClientRows, KeyStore

    return KeyStore(ClientRows(connect(pipeline_settings())))


@keys_app.command("create")
def keys_create(
    tenant: str = typer.Option(..., "--tenant", help="the tenant the key reads and writes"),
    scope: list[str] = typer.Option(
        ..., "--scope", help="read, ingest or admin; repeat or comma-separate"
    ),
    name: str = typer.Option("", "--name", help="what the key is for"),
) -> None:
    """Create a key and print it once (only its hash is stored)."""
    from query_api.keys import parse_scopes

    try:
        scopes = parse_scopes(scope)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--scope") from exc
    key, plain = _key_store().create(tenant, scopes, name)
    console.print(
        f"key id {key.key_id}, tenant {key.tenant_id}, scopes {', '.join(sorted(key.scopes))}"
    )
    console.print("the key (shown only now; store it as a secret):")
    typer.echo(plain)


@keys_app.command("list")
def keys_list(
    tenant: str = typer.Option("", "--tenant", help="only this tenant's keys"),
    revoked: bool = typer.Option(False, "--revoked", help="include revoked keys"),
) -> None:
    """List keys (ids, tenants, scopes; never the keys themselves)."""

    table = Table("key id", "tenant", "scopes", "name", "created", "revoked")
    for key in _key_store().list(tenant or None):
        if key.revoked_at is not None and not revoked:
            continue
        table.add_row(
            key.key_id,
            key.tenant_id,
            ",".join(sorted(key.scopes)),
            key.name,
            f"{key.created_at:%Y-%m-%d %H:%M:%S}",
            f"{key.revoked_at:%Y-%m-%d %H:%M:%S}" if key.revoked_at else "",
        )
    print_table(table)


@keys_app.command("revoke")
def keys_revoke(key_id: str = typer.Argument(..., help="the key id from `keys list`")) -> None:
    """Revoke a key (processes stop accepting it within LLM_USAGE_API_KEY_CACHE_S)."""
    key = _key_store().revoke(key_id)
    if key is None:
        console.print(f"[red]no key {key_id}[/red]")
        raise typer.Exit(1)
    console.print(f"revoked {key.key_id} (tenant {key.tenant_id})")


# --- demo, run and benchmark commands --------------------------------------------------------


@app.command()
def simulate(
    calls: int = typer.Option(10_000, "--calls", min=1, help="unique calls to publish"),
    days: float = typer.Option(0.0, "--days", min=0, help="backfill over the last D days (0: now)"),
    rate: float = typer.Option(0.0, "--rate", min=0, help="calls per second (0: unlimited)"),
    seed: int = typer.Option(42, "--seed", help="random seed of the traffic shape"),
    tenants: int = typer.Option(3, "--tenants", min=1, help="number of tenants"),
    manifest: Path | None = typer.Option(
        None, "--manifest", help="write the totals as JSON here (every attribute value)"
    ),
) -> None:
    """Publish realistic demo traffic through producers/ and print what was published."""
    import asyncio
    import json

    from llm_usage.runner import progress_bar
    from llm_usage.simulate import SimulationConfig, publish

    cfg = SimulationConfig(calls=calls, days=days, seed=seed, tenants=tenants)
    with progress_bar() as bar:
        task = bar.add_task("publishing", total=calls)
        result = asyncio.run(
            publish(
                get_settings(), cfg, rate=rate or None, on_progress=lambda n: bar.advance(task, n)
            )
        )
    totals = result.as_json()
    text = json.dumps(totals, indent=2)
    if manifest is not None:
        manifest.write_text(text + "\n")
    # on the terminal, each attribute key's 5 costliest values (hundreds of users otherwise)
    shown = {**totals, "by_attribute": _top_attribute_values(totals["by_attribute"], 5)}
    console.print_json(json.dumps(shown))


def _top_attribute_values(
    by_attribute: dict[str, dict[str, dict[str, Any]]], top: int
) -> dict[str, dict[str, Any]]:
    """Per key: how many values, and the ``top`` costliest with their totals."""
    from decimal import Decimal

    out: dict[str, dict[str, Any]] = {}
    for key, values in by_attribute.items():
        ranked = sorted(values.items(), key=lambda kv: (-Decimal(kv[1]["cost_usd"]), kv[0]))
        out[key] = {"values": len(values), f"top_{top}_by_cost": dict(ranked[:top])}
    return out


@app.command()
def run(
    demo: bool = typer.Option(True, help="backfill demo data once and keep live traffic flowing"),
    demo_calls: int = typer.Option(30_000, help="calls in the one-off demo backfill"),
    demo_days: float = typer.Option(7.0, help="days the demo backfill spans"),
    trickle_rate: float = typer.Option(0.5, help="live demo calls per second (0: none)"),
) -> None:
    """Run the whole pipeline locally (stack, migrations, worker, API) until Ctrl-C."""
    from llm_usage.runner import RunOptions, run_pipeline

    run_pipeline(
        pipeline_settings(),
        RunOptions(
            demo=demo, demo_calls=demo_calls, demo_days=demo_days,
            trickle_rate=trickle_rate if demo else 0.0,
        ),
    )  # fmt: skip


def _add_bench_commands() -> None:
    """``llm-usage bench ...``: the benchmarks come with a checkout, not with the image."""
    try:
        from benchmarks.cli import bench_app
    except ModuleNotFoundError as exc:
        if exc.name != "benchmarks":
            raise

        @app.command(
            "bench",
            context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
        )
        def bench_unavailable(ctx: typer.Context) -> None:
            """Benchmarks (in a source checkout only)."""
            console.print(
                "[red]the benchmarks are not installed here: they live in the source "
                "checkout (benchmarks/); run `pip install -e .` in a clone[/red]"
            )
            raise typer.Exit(2)

        return
    app.add_typer(bench_app, name="bench")


_add_bench_commands()
