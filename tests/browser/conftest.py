"""Browser tests of the Usage page: Debian's Chromium driven by Playwright, against the real
API (uvicorn on a free loopback port) reading generated rows from the real ClickHouse.

Chromium is Debian's ``/usr/bin/chromium`` (``make browser-deps`` installs it); Playwright
never downloads a browser here. Without Chromium or Playwright these tests skip and say why.
"""

from __future__ import annotations

import os
import random
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from llm_usage.clickhouse import apply_migrations, connect
from llm_usage.localstack.processes import free_port
from llm_usage.settings import Settings
from tests.conftest import SCREENSHOT_DIR, unique

CHROMIUM = os.environ.get("LLM_USAGE_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

KEY = "browser-test-key"
TENANT = "browser-tenant"
EMPTY_KEY = "browser-empty-key"
# A zone with a 45-minute offset: buckets must follow it, not UTC.
TIME_ZONE = "Asia/Kathmandu"

COLUMNS = [
    "event_id", "tenant_id", "occurred_at", "source", "source_id", "source_name", "model",
    "input_tokens", "output_tokens", "cache_creation_input_tokens", "cache_read_input_tokens",
    "cost_usd", "priced", "duration_ms", "status", "kafka_topic", "kafka_partition",
    "kafka_offset", "cache_read_savings_usd", "cache_write_premium_usd",
]  # fmt: skip
# Prompt-cache figures of the generated calls at Claude Sonnet 4.5's prices per token:
# a read saves $3 - $0.30 per MTok, a 5-minute write costs $3.75 - $3 more.
READ_SAVES = Decimal("0.0000027")
WRITE_COSTS_MORE = Decimal("0.00000075")

# (source, source_id, name): a few conversations and agents, one with a searchable word.
ENTITIES = [
    ("chat", "conv-trip", "Trip planning"),
    ("chat", "conv-refactor", "Refactor ideas"),
    ("chat", "conv-zebra", "Zebra migration notes"),
    ("agent", "agent-digest", "Daily digest"),
    ("agent", "agent-triage", "Inbox triage"),
    ("agent", "agent-zebra", "Zebra watcher"),
    ("memory", "conv-trip", "Trip planning"),
    ("memory", "conv-refactor", "Refactor ideas"),
    ("chat", "conv-markup", '<img src=x onerror="window.pwned=1"> & "quotes"'),
]


@dataclass(frozen=True)
class PageData:
    settings: Settings
    events_24h: int
    events_7d: int
    events_30d: int


@dataclass(frozen=True)
class Api:
    """The running API: its base URL and a client with the test tenant's key."""

    base_url: str
    data: PageData

    def get(self, path: str, key: str = KEY, **params: Any) -> Any:
        response = httpx.get(
            f"{self.base_url}{path}",
            params=params,
            headers={"Authorization": f"Bearer {key}"},
            timeout=30,
        )
        response.raise_for_status()
        return response.json()


def _rows(now: datetime) -> tuple[list[list[object]], tuple[int, int, int]]:
    """Generated calls: 47 in the last 24 h, 60 more in the week, 40 more in the month.

    Times keep clear of the window edges (24 h, 7 d, 30 d ago) so that the test and the page,
    asking a few seconds apart, see the same rows.
    """
    rng = random.Random(20261125)
    spans = [
        (47, timedelta(minutes=3), timedelta(hours=23)),
        (60, timedelta(hours=25), timedelta(days=6, hours=20)),
        (40, timedelta(days=7, hours=4), timedelta(days=29, hours=20)),
    ]
    rows: list[list[object]] = []
    offset = 0
    for count, newest, oldest in spans:
        for i in range(count):
            source, source_id, name = ENTITIES[(offset + i) % len(ENTITIES)]
            age = newest + (oldest - newest) * rng.random()
            input_tokens = rng.randint(200, 60_000)
            output_tokens = rng.randint(20, 4_000)
            cost = (
                Decimal(input_tokens) * Decimal("0.000003")
                + Decimal(output_tokens) * Decimal("0.000015")
                + Decimal(rng.randint(0, 999)) / Decimal(10**12)
            )
            writes, reads = rng.choice([0, 0, 1200]), rng.choice([0, 8000])
            rows.append([
                uuid.uuid4(), TENANT, now - age, source, source_id, name, "claude-sonnet-4-5",
                input_tokens, output_tokens, writes, reads,
                cost, True, rng.randint(400, 45_000), "ok", "calls", 0, offset + i,
                reads * READ_SAVES, writes * WRITE_COSTS_MORE,
            ])  # fmt: skip
        offset += count
    n24, n7, n30 = (s[0] for s in spans)
    return rows, (n24, n24 + n7, n24 + n7 + n30)


@pytest.fixture(scope="module")
def page_data(base_settings: Settings) -> Iterator[PageData]:
    """A database of its own with generated calls of one tenant (another key sees nothing)."""
    settings = base_settings.model_copy(
        update={
            "clickhouse_database": unique("browser"),
            "api_keys": f"{KEY}:{TENANT},{EMPTY_KEY}:nobody-home",
        }
    )
    client = connect(settings, database="")
    apply_migrations(client, settings)
    rows, (n24, n7, n30) = _rows(datetime.now(UTC))
    data_client = connect(settings)
    data_client.insert("usage_events", rows, column_names=COLUMNS)
    data_client.close()
    try:
        yield PageData(settings=settings, events_24h=n24, events_7d=n7, events_30d=n30)
    finally:
        if not os.environ.get("LLM_USAGE_KEEP_TEST_DATABASES"):
            client.command(f"DROP DATABASE IF EXISTS `{settings.clickhouse_database}` SYNC")
        client.close()


@pytest.fixture(scope="module")
def api(page_data: PageData) -> Iterator[Api]:
    """The real query API (with the page) served by uvicorn in a thread on a free port."""
    import uvicorn

    from query_api.app import create_app

    port = free_port()
    config = uvicorn.Config(
        create_app(page_data.settings), host="127.0.0.1", port=port, log_level="warning"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="usage-api", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the API server did not start")
        time.sleep(0.05)
    try:
        yield Api(base_url=f"http://127.0.0.1:{port}", data=page_data)
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(scope="package")
def browser() -> Iterator[Any]:
    """Debian's Chromium, headless, for the browser tests (skips, with the reason, if absent).

    Package scope, not session: Playwright's sync API keeps an event loop running in the
    main thread while it is open, and later tests call ``asyncio.run()``.
    """
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        pytest.skip(
            f"Chromium not found at {CHROMIUM}: run `make browser-deps` "
            "(apt-get install chromium) or set LLM_USAGE_CHROMIUM"
        )
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:  # pragma: no cover - dev extras not installed
        pytest.skip(f"playwright is not installed ({exc}): pip install -e '.[dev]'")
    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield instance
        finally:
            instance.close()


@pytest.fixture
def context(browser: Any, api: Api) -> Iterator[Any]:
    """A fresh browser profile (empty localStorage) in a 45-minute-offset time zone."""
    ctx = browser.new_context(
        base_url=api.base_url,
        viewport={"width": 1400, "height": 1000},
        timezone_id=TIME_ZONE,
        locale="en-US",
        reduced_motion="reduce",
    )
    ctx.set_default_timeout(15_000)
    try:
        yield ctx
    finally:
        ctx.close()


@pytest.fixture
def page(context: Any) -> Iterator[Any]:
    """A page whose browser already holds the test tenant's key; JS errors fail the test."""
    context.add_init_script(
        "if (!localStorage.getItem('llmUsage.apiKey'))"
        f" localStorage.setItem('llmUsage.apiKey', '{KEY}')"
    )
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield page
    assert errors == [], f"JavaScript errors on the page: {errors}"


PANELS = ("cards", "timeseries", "by-source", "by-model", "top", "records")


def wait_ready(page: Any, *panels: str) -> None:
    """Wait until each panel (all of ``PANELS`` by default) has finished."""
    for panel in panels or PANELS:
        page.wait_for_selector(f"#{panel}[data-state=ready], #{panel}[data-state=empty]")


def save_screenshot(page: Any, name: str, selector: str | None = None) -> Path:
    """A full-page PNG (or of the element ``selector``) in test-output/browser/, listed at
    the end of the pytest run (tests/conftest.py)."""
    SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOT_DIR / name
    if selector:
        page.locator(selector).screenshot(path=str(path))
    else:
        page.screenshot(path=str(path), full_page=True)
    print(f"screenshot of the Usage page: {path}")
    return path


def format_tokens(value: int) -> str:
    """The page's compact token format (query_api/static/format.js), for expected values."""
    n = abs(int(value))
    if n < 1000:
        return str(n)
    units = [(10**12, "T"), (10**9, "B"), (10**6, "M"), (10**3, "K")]
    for i, (unit, suffix) in enumerate(units):
        if n >= unit:
            tenths = (n * 10 * 2 + unit) // (unit * 2)  # half up
            if tenths >= 10_000 and i > 0:
                unit, suffix = units[i - 1]
                tenths = (n * 10 * 2 + unit) // (unit * 2)
            return f"{tenths // 10}.{tenths % 10}{suffix}"
    return str(n)


def format_usd(value: str) -> str:
    """The page's money format: 2 decimals from $1, else 4, rounded half up, exact."""
    amount = Decimal(value)
    if amount == 0:
        return "$0.00"
    places = Decimal("0.01") if amount >= 1 else Decimal("0.0001")
    rounded = amount.quantize(places, rounding=ROUND_HALF_UP)
    if rounded >= 1 and places != Decimal("0.01"):
        rounded = amount.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)
    if amount > 0 and rounded == 0:
        return "<$0.0001"
    return f"${rounded:,}"
