"""``llm-usage run``: the whole pipeline on one machine, with demo traffic.

Starts the local stack (if it is not running), applies migrations, creates the topics,
starts one worker and the API as child processes, backfills a week of demo traffic once
per ClickHouse data folder, keeps a trickle of live calls flowing, and on Ctrl-C stops
exactly what it started, by PID.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import signal
import time
import urllib.error
import urllib.parse
import urllib.request
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from clickhouse_connect.driver.client import Client
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

from llm_usage.children import ChildProcess
from llm_usage.clickhouse import connect, migrate
from llm_usage.localstack import LocalStack, stack_settings
from llm_usage.settings import Settings
from llm_usage.simulate import SimulationConfig, publish
from stream_processor.harness import WorkerProcess

console = Console()


@dataclass(frozen=True)
class RunOptions:
    demo: bool = True
    demo_calls: int = 30_000
    demo_days: float = 7.0
    trickle_rate: float = 0.5  # live calls per second after the backfill; 0 disables
    seed: int = 42


def progress_bar() -> Progress:
    return Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


def demo_api_keys(home: Path, tenants: int) -> str:
    """``key:tenant`` pairs for the demo tenants, generated once and kept in ``home``."""
    path = home / "demo-api-keys"
    if path.exists():
        return path.read_text().strip()
    keys = ",".join(f"demo-{secrets.token_hex(8)}:tenant-{t + 1}" for t in range(tenants))
    home.mkdir(parents=True, exist_ok=True)
    path.write_text(keys + "\n")
    path.chmod(0o600)
    return keys


class ApiProcess(ChildProcess):
    """``llm-usage api`` as a child process, stopped by its own PID."""

    command = "api"

    def __init__(self, settings: Settings, log_path: Path) -> None:
        super().__init__(["llm_usage", self.command], settings, log_path)

    @property
    def base_url(self) -> str:
        return f"http://{self.settings.api_host}:{self.settings.api_port}"

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running():
                raise RuntimeError(f"{self.command} exited; log {self.log_path}:\n{self.tail()}")
            try:
                with urllib.request.urlopen(f"{self.base_url}/readyz", timeout=2):
                    return
            except (OSError, urllib.error.HTTPError):
                time.sleep(0.2)
        raise TimeoutError(f"{self.command} not ready after {timeout}s; see {self.log_path}")

    def get(self, path: str, key: str) -> dict[str, Any]:
        request = urllib.request.Request(
            f"{self.base_url}{path}", headers={"Authorization": f"Bearer {key}"}
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return dict(json.loads(response.read()))


class AlerterProcess(ChildProcess):
    """``llm-usage alerter`` as a child process."""

    def __init__(self, settings: Settings, log_path: Path) -> None:
        super().__init__(["llm_usage", "alerter"], settings, log_path)


class IngestProcess(ApiProcess):
    """``llm-usage ingest`` as a child process (ready once Kafka accepts connections)."""

    command = "ingest"

    def __init__(self, settings: Settings, log_path: Path, *, workers: int = 1) -> None:
        super().__init__(settings, log_path)
        if workers > 1:
            self.argv = [*self.argv, "--workers", str(workers)]

    @property
    def base_url(self) -> str:
        return f"http://{self.settings.ingest_host}:{self.settings.ingest_port}"


def _count(client: Client) -> int:
    return int(client.query("SELECT count() FROM usage_events").result_rows[0][0])


def wait_for_rows(settings: Settings, expected: int, timeout: float = 600.0) -> int:
    """Wait until ``usage_events`` holds ``expected`` rows; returns the final count."""
    client = connect(settings)
    deadline = time.monotonic() + timeout
    count = 0
    with progress_bar() as bar:
        task = bar.add_task("worker → ClickHouse", total=expected)
        while time.monotonic() < deadline:
            count = _count(client)
            bar.update(task, completed=min(count, expected))
            if count >= expected:
                return count
            time.sleep(0.5)
    return count


def page_link(base_url: str, key: str) -> str:
    """The Usage page, signed in: the key in the URL fragment, which browsers never send to
    the server (nor in a Referer); the page stores it as its key dialog does and removes it
    from the address bar."""
    return f"{base_url}/#key={urllib.parse.quote(key, safe='')}"


def run_pipeline(settings: Settings, options: RunOptions) -> None:
    """Run everything until Ctrl-C or SIGTERM, then stop what was started."""
    stack = LocalStack(settings)
    already_up = all(s.running for s in stack.status())
    stack.up()
    console.print(f"stack: Kafka {settings.kafka_bootstrap}, ClickHouse {settings.clickhouse_url}")
    settings = stack_settings(settings)  # a sharded stack (LLM_USAGE_CLICKHOUSE_SHARDS)
    migrate(settings)

    if not settings.api_key_tenants:
        settings = settings.model_copy(update={"api_keys": demo_api_keys(stack.home, tenants=3)})
    # Local defaults: join the consumer group fast instead of after 30 s.
    settings = settings.model_copy(
        update={"processor_rebalance_timeout_s": 3.0, "processor_session_timeout_s": 10.0}
    )
    logs = stack.home / "logs"
    with ExitStack() as cleanup:
        if not already_up:
            cleanup.callback(stack.down)
        from producers.topics import ensure_topics

        asyncio.run(ensure_topics(settings))
        worker = WorkerProcess(settings, logs / "worker.log").start()
        cleanup.callback(worker.stop)
        api = ApiProcess(settings, logs / "api.log").start()
        cleanup.callback(api.stop)
        ingest = IngestProcess(settings, logs / "ingest.log").start()
        cleanup.callback(ingest.stop)
        alerter = AlerterProcess(settings, logs / "alerter.log").start()
        cleanup.callback(alerter.stop)
        worker.wait_assigned(timeout=120)
        api.wait_ready()
        ingest.wait_ready()
        console.print(
            f"worker pid {worker.pid}, API pid {api.pid}, ingest pid {ingest.pid},"
            f" alerter pid {alerter.pid}"
            f" ({ingest.base_url}/v1/events, /v1/traces); logs in {logs}"
        )

        if options.demo:
            _backfill_once(settings, options, stack.home, api)

        key, tenant = next(iter(settings.api_key_tenants.items()))
        keys_file = stack.home / "demo-api-keys"
        console.print(f"\n[bold]Usage page:[/bold] {page_link(api.base_url, key)}", soft_wrap=True)
        console.print(f"(signed in as tenant {tenant} with API key {key}; the key rides in the")
        console.print(" link's #fragment, which the browser never sends; the page keeps it and")
        console.print(f" clears the address bar. Every demo tenant's key is in {keys_file})")
        console.print("Ctrl-C stops the worker, the API and the stack this command started.")
        _trickle_until_interrupted(settings, options)
    console.print("stopped.")


def _backfill_once(settings: Settings, options: RunOptions, home: Path, api: ApiProcess) -> None:
    marker = home / "demo-manifest.json"
    if marker.exists():
        console.print(f"demo data already loaded ({marker}); skipping the backfill")
        return
    client = connect(settings)
    before = _count(client)
    cfg = SimulationConfig(calls=options.demo_calls, days=options.demo_days, seed=options.seed)
    window_end = datetime.now(UTC)
    cfg = SimulationConfig(**{**cfg.__dict__, "end": window_end})
    with progress_bar() as bar:
        task = bar.add_task(f"publishing {cfg.calls:,} demo calls", total=cfg.calls)
        manifest = asyncio.run(publish(settings, cfg, on_progress=lambda n: bar.advance(task, n)))
    wait_for_rows(settings, before + manifest.total.calls)
    marker.write_text(json.dumps(manifest.as_json(), indent=2))
    # The API must agree with what was published, to the last decimal.
    start = (window_end - timedelta(days=options.demo_days, seconds=1)).isoformat()
    end = (window_end + timedelta(seconds=1)).isoformat()
    for key, tenant in settings.api_key_tenants.items():
        expected = manifest.by_tenant.get(tenant)
        if expected is None:
            continue
        query = urllib.parse.urlencode({"from": start, "to": end})
        summary = api.get(f"/v1/usage/summary?{query}", key)
        same = (
            summary["calls"] == expected.calls
            and Decimal(summary["total_cost_usd"]) == expected.cost_usd
        )
        mark = "[green]matches[/green]" if same else "[red]DIFFERS from[/red]"
        console.print(f"{tenant}: API {summary['calls']} calls ${summary['total_cost_usd']} "
                      f"{mark} manifest {expected.calls} calls ${expected.cost_usd}")  # fmt: skip


def _trickle_until_interrupted(settings: Settings, options: RunOptions) -> None:
    stop = asyncio.Event()

    async def trickle() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        seed = options.seed
        while not stop.is_set():
            if options.trickle_rate <= 0:
                await asyncio.wait_for(stop.wait(), timeout=None)
                break
            seed += 1
            cfg = SimulationConfig(calls=600, days=0, seed=seed, spike=False)
            await publish(settings, cfg, rate=options.trickle_rate, stop=stop)

    asyncio.run(trickle())
