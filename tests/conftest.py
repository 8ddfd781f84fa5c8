"""Session-wide fixtures: one real broker and one real ClickHouse server for the whole run.

They are started through the same code as ``llm-usage stack up`` on free loopback ports,
in a temporary ``LLM_USAGE_HOME``, and stopped by PID when the session ends. Each test that
writes gets its own database (and its own topics), so tests never see each other's rows.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from llm_usage.clickhouse import drop_database, migrate
from llm_usage.kafka import kafka_client_options
from llm_usage.localstack import LocalStack, stack_settings
from llm_usage.localstack.processes import free_port, free_ports
from llm_usage.settings import Settings
from stream_processor.harness import WorkerProcess
from tests.containers import containers_or_none


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """The local broker + ClickHouse server, up for the whole test session.

    ``LLM_USAGE_TEST_INFRA=containers``: Apache Kafka and ClickHouse server containers
    instead, where Docker runs (else a warning and the local stack; see tests/containers.py).
    """
    home = tmp_path_factory.mktemp("llm-usage-home")
    shards = session_shards()
    ports = free_ports(2 * shards)  # HTTP ports of the shards, then their native ports
    settings = Settings(
        home=home,
        kafka_bootstrap=f"127.0.0.1:{free_port()}",
        clickhouse_url=f"http://127.0.0.1:{ports}",
        clickhouse_tcp_port=ports + shards,
        clickhouse_shards=shards,
    )
    containers = containers_or_none(settings)
    if containers is not None:
        try:
            yield containers  # type: ignore[misc]  # same surface as LocalStack
        finally:
            containers.down()
        return
    local = LocalStack(settings)
    local.up()
    try:
        yield local
    finally:
        local.down()


def session_shards() -> int:
    """``LLM_USAGE_TEST_SHARDS=2``: the session's ClickHouse is a cluster of that many
    shards (``make test`` runs the ``sharded`` tests that way after the whole suite)."""
    return int(os.environ.get("LLM_USAGE_TEST_SHARDS", "1"))


@pytest.fixture(scope="session")
def base_settings(stack: LocalStack) -> Settings:
    """The session stack's settings; on a sharded stack they name its cluster and shards."""
    return stack_settings(stack.settings)


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


@pytest.fixture
def settings(base_settings: Settings, tmp_path: Path) -> Settings:
    """Settings for one test: its own database, topics, worker consumer group and local state
    folder (a group shared between tests makes their workers join, and wait on, each other)."""
    return base_settings.model_copy(
        update={
            "clickhouse_database": unique("test"),
            "processor_group": unique("proc"),
            "topic_calls": unique("calls"),
            "topic_entities": unique("entities"),
            "topic_dead_letter": unique("dlq"),
            "topic_alerts": unique("alerts"),
            "topic_budget_status": unique("budget-status"),
            "home": tmp_path / "home",
        }
    )


@pytest.fixture
def migrated(settings: Settings) -> Iterator[Settings]:
    """``settings`` with its database created and every migration applied (on every shard
    of a sharded session stack)."""
    migrate(settings)
    try:
        yield settings
    finally:
        if not os.environ.get("LLM_USAGE_KEEP_TEST_DATABASES"):
            drop_database(settings)


def wait_for(
    check: Callable[[], bool],
    timeout: float,
    what: str,
    *,
    detail: Callable[[], str] | None = None,
) -> None:
    """Poll ``check`` until it holds; fail with ``what`` after ``timeout`` seconds.

    ``detail`` (a worker's log tail, say) goes into the failure message: a CI run that
    times out then shows why.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    message = f"timed out after {timeout:.0f}s waiting for {what}"
    raise AssertionError(f"{message}\n{detail()}" if detail else message)


def calls_offsets(settings: Settings) -> dict[int, tuple[int, int]]:
    """Per calls partition: (offset the worker's group committed, 0 if none; end offset)."""

    async def read() -> dict[int, tuple[int, int]]:
        consumer = AIOKafkaConsumer(
            **kafka_client_options(settings),
            group_id=settings.processor_group,  # never joins: it only fetches the offsets
            enable_auto_commit=False,
        )
        await consumer.start()
        try:
            await consumer.topics()  # refreshes the metadata
            partitions = consumer.partitions_for_topic(settings.topic_calls) or set()
            ends = await consumer.end_offsets(
                [TopicPartition(settings.topic_calls, p) for p in sorted(partitions)]
            )
            return {
                tp.partition: ((await consumer.committed(tp)) or 0, end) for tp, end in ends.items()
            }
        finally:
            await consumer.stop()

    return asyncio.run(read())


def committed_everything(settings: Settings) -> bool:
    """The worker's group committed every message of the calls topic: each one is handled
    (stored, or dropped as a duplicate or a dead letter), so no write is still to come."""
    offsets = calls_offsets(settings)
    return bool(offsets) and all(done >= end for done, end in offsets.values())


@pytest.fixture
def worker_factory(tmp_path: Path) -> Iterator[Callable[[Settings], WorkerProcess]]:
    """Start worker subprocesses; each one is stopped by its own PID at the end."""
    started: list[WorkerProcess] = []

    def start(settings: Settings) -> WorkerProcess:
        worker = WorkerProcess(settings, tmp_path / f"worker-{len(started)}.log").start()
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()


# Repo-level folder for artefacts a person looks at (gitignored): the page's screenshots.
SCREENSHOT_DIR = Path(__file__).resolve().parents[1] / "test-output" / "browser"
_SESSION_STARTED = time.time()


@pytest.fixture
def figure(request: pytest.FixtureRequest) -> Callable[[str], None]:
    """``figure("...")``: a measured figure (a detection delay, a false-alert count) that
    pytest prints at the end of the run, passed or failed, under "figures of this run"
    (kept in the test's report, so it reaches the summary from pytest-xdist workers too)."""

    def note(line: str) -> None:
        request.node.user_properties.append(("figure", line))
        print(line)

    return note


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    figures: dict[tuple[str, str], None] = {}  # ordered, one per test and line
    for reports in terminalreporter.stats.values():
        for report in reports:
            for key, value in getattr(report, "user_properties", ()):
                if key == "figure":
                    figures[(report.nodeid, str(value))] = None
    if figures:
        terminalreporter.section("figures of this run")
        for nodeid, line in figures:
            terminalreporter.write_line(f"{nodeid}: {line}")
    if SCREENSHOT_DIR.is_dir():
        for path in sorted(SCREENSHOT_DIR.glob("*.png")):
            if path.stat().st_mtime >= _SESSION_STARTED:
                terminalreporter.write_line(f"Usage page screenshot: {path}")
