"""The ``llm-usage`` command: local stack, migrations, and (later) worker, API and tools."""

from __future__ import annotations

import time

import typer
from rich.console import Console

from llm_usage.localstack.stack import ServiceStatus
from llm_usage.settings import get_settings

app = typer.Typer(help="LLM usage analytics pipeline.", no_args_is_help=True)
stack_app = typer.Typer(help="The local Kafka broker and ClickHouse server.", no_args_is_help=True)
app.add_typer(stack_app, name="stack")
console = Console()


def _print_status(statuses: list[ServiceStatus]) -> None:
    for s in statuses:
        state = "[green]up[/green]  " if s.running else "[red]down[/red]"
        console.print(
            f"{s.name:<24} {state} pid {s.pid or '-':<8} {s.address:<24} {s.detail}  log {s.log}",
            soft_wrap=True,
        )


@stack_app.command("up")
def stack_up() -> None:
    """Start the broker and ClickHouse in the background (idempotent)."""
    from llm_usage.localstack import LocalStack
    from llm_usage.localstack.stack import StackError

    started = time.monotonic()
    stack = LocalStack(get_settings())
    try:
        statuses = stack.up()
    except StackError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from exc
    _print_status(statuses)
    console.print(f"ready in {time.monotonic() - started:.2f}s; state in {stack.state_file}")


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
    from llm_usage.clickhouse import apply_migrations, connect
    from llm_usage.clickhouse.migrations import MigrationError, apply_retention

    settings = get_settings()
    client = connect(settings, database="")
    try:
        applied = apply_migrations(client, settings)
        ttl_changed = apply_retention(client, settings)
    except MigrationError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from exc
    for migration in applied:
        console.print(f"applied {migration.path.name}")
    if ttl_changed:
        console.print(f"usage_events TTL set to {settings.raw_retention_days} days")
    if not applied:
        console.print(f"database {settings.clickhouse_database} is up to date")


# --- producers commands (issue 3) ----------------------------------------------------------

# --- stream processor commands (issue 4) ---------------------------------------------------

# --- query API commands (issue 5, 6) -------------------------------------------------------

# --- demo, run and benchmark commands (issue 7) --------------------------------------------
