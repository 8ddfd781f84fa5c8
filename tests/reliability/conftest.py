"""Shared pieces of the reliability suite: workers, own stacks, traffic with a manifest, totals.

Every fault test compares what ClickHouse holds (raw table and both rollups) with the
manifest of what was published (each unique valid call once, priced with the worker's own
price book), to the last token and the last pico-dollar. Processes started here are stopped
by their PID; a test that stops a service runs on its own stack, never the session's.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from llm_usage.clickhouse import apply_migrations, connect
from llm_usage.localstack import LocalStack
from llm_usage.localstack.processes import free_port
from llm_usage.settings import Settings
from llm_usage.simulate import Manifest, SimulationConfig, book_pricer, generate
from producers.contract import UsageEvent
from producers.publisher import UsagePublisher
from stream_processor.harness import WorkerProcess
from stream_processor.pricing import PriceBook
from tests.conftest import committed_everything, wait_for
from tests.integration.test_processor_crash import missing_report

# (calls, input, output, cache writes 5m + 1h, cache reads, cost, unpriced calls)
Totals = tuple[int, int, int, int, int, Decimal, int]

RAW_SQL = (
    "SELECT count(), sum(input_tokens), sum(output_tokens),"
    " sum(cache_creation_5m_input_tokens + cache_creation_1h_input_tokens),"
    " sum(cache_read_input_tokens), sum(cost_usd), countIf(NOT priced) FROM usage_events"
)
ROLLUP_SQL = (
    "SELECT sum(calls), sum(input_tokens), sum(output_tokens),"
    " sum(cache_creation_5m_input_tokens + cache_creation_1h_input_tokens),"
    " sum(cache_read_input_tokens), sum(cost_usd), sum(unpriced_calls) FROM {table}"
)
PRICER = book_pricer(PriceBook.load())


def fast_worker(settings: Settings, **overrides: Any) -> Settings:
    """Worker settings for tests: quick joins, small batches, loopback web port."""
    values: dict[str, Any] = {
        "processor_group": f"rel-{settings.topic_calls}",
        "processor_rebalance_timeout_s": 3.0,
        "processor_session_timeout_s": 10.0,
        "processor_web_port": free_port(),
        "processor_batch_max_events": 500,
        "processor_batch_max_seconds": 0.2,
        "processor_retry_max_s": 1.0,
        "producer_linger_ms": 5,
    }
    values.update(overrides)
    return settings.model_copy(update=values)


def totals(settings: Settings) -> dict[str, Totals]:
    """The same seven totals from ``usage_events``, ``usage_hourly`` and ``usage_daily``."""
    client = connect(settings)
    try:

        def row(sql: str) -> Totals:
            r = client.query(sql).result_rows[0]
            return (int(r[0]), int(r[1]), int(r[2]), int(r[3]), int(r[4]), Decimal(r[5]),
                    int(r[6]))  # fmt: skip

        return {
            "raw": row(RAW_SQL),
            "usage_hourly": row(ROLLUP_SQL.format(table="usage_hourly")),
            "usage_daily": row(ROLLUP_SQL.format(table="usage_daily")),
        }
    finally:
        client.close()


def written(worker: WorkerProcess) -> float:
    """Rows in ClickHouse-acknowledged inserts of this worker process (0 until it answers)."""
    try:
        return worker.metrics().get("llm_usage_processor_events_written_total", 0.0)
    except OSError:
        return 0.0


def raw_count(settings: Settings) -> int:
    try:
        client = connect(settings)
    except Exception:  # ClickHouse down (outage tests): nothing is countable right now
        return -1
    try:
        return int(client.query("SELECT count() FROM usage_events").result_rows[0][0])
    except Exception:
        return -1
    finally:
        client.close()


def expected(manifest: Manifest) -> Totals:
    t = manifest.total
    return (t.calls, t.input_tokens, t.output_tokens, t.cache_creation_input_tokens,
            t.cache_read_input_tokens, t.cost_usd, t.unpriced_calls)  # fmt: skip


def assert_exact(
    settings: Settings,
    manifest: Manifest,
    timeout: float = 120.0,
    *,
    worker: WorkerProcess | None = None,
    events: list[UsageEvent] | None = None,
) -> Totals:
    """Wait for every row and for the worker to have handled every message, then compare
    all three tables: a duplicate or a double-counted replay would be in them by then.

    On a timeout the failure shows ``worker``'s log tail (why it stopped writing) and, given
    the published ``events``, where each missing one sits in the topic (or that it is not
    there: lost before Kafka).
    """
    want = expected(manifest)
    detail: Callable[[], str] | None = None
    if worker is not None:
        tail = worker.tail
        detail = (
            tail
            if events is None
            else lambda: f"{missing_report(settings, events, worker)}\n{tail()}"
        )
    wait_for(lambda: raw_count(settings) >= want[0], timeout, f"{want[0]} rows", detail=detail)
    wait_for(
        lambda: committed_everything(settings),
        60,
        "the worker to commit every message of the calls topic",
        detail=detail,
    )
    # The last insert can still be under way although every offset looks committed: the
    # broker's end offsets can lag a batch it is still writing (Tansu reserves offsets
    # first; a soak run showed a worker still writing offsets 432-436 of a partition after
    # the check above saw it all committed), and the views of one insert commit one after
    # the other (raw first). Rollups only grow, so a double count or a lost row never
    # reaches the manifest: wait for every table to reach it, then compare.
    deadline = time.monotonic() + 30
    got = totals(settings)
    while any(values != want for values in got.values()) and time.monotonic() < deadline:
        time.sleep(0.2)
        got = totals(settings)
    for table, values in got.items():
        assert values == want, f"{table}: {values} != manifest {want}"
    return want


def assert_never_crashed(worker: WorkerProcess) -> None:
    """The process runs and no Faust service or agent crashed (and was restarted) in it."""
    assert worker.running(), worker.tail()
    log = worker.tail(50_000_000)
    assert "Crashed reason=" not in log, log[log.find("Crashed reason=") - 200 :][:3000]


@pytest.fixture
def own_stack(tmp_path: Path) -> Iterator[LocalStack]:
    """A broker + ClickHouse of this test alone (free ports), for tests that stop services."""
    settings = Settings(
        home=tmp_path / "own-home",
        kafka_bootstrap=f"127.0.0.1:{free_port()}",
        clickhouse_url=f"http://127.0.0.1:{free_port()}",
        clickhouse_database="reliability",
        topic_calls="calls",
        topic_entities="entities",
        topic_dead_letter="dead-letter",
    )  # type: ignore[call-arg]
    local = LocalStack(settings)
    try:
        local.up()
        apply_migrations(connect(settings, database=""), settings)
        yield local
    finally:
        local.down()


@pytest.fixture
def rng(request: pytest.FixtureRequest) -> random.Random:
    """A seeded RNG for "random moments"; the seed is printed so a failure can be replayed."""
    seed = random.SystemRandom().randrange(1 << 32)
    print(f"\n{request.node.name}: random seed {seed}")
    return random.Random(seed)


@dataclass
class Stream:
    """Simulated traffic published at a steady pace from a background thread.

    ``manifest`` is complete once :meth:`join` returned; ``published`` counts unique calls.
    """

    settings: Settings
    cfg: SimulationConfig
    rate: float
    publishers: int = 1  # several "services", each with its own publisher and spool
    # Pause after each of these many unique calls until ``resume`` is released: a fault
    # injected meanwhile lands while the stream flows, however slowly a busy machine consumes
    # it. Each release lets exactly one hold pass, also one released before the stream got
    # there (an Event would merge two early releases into one and leave a later hold waiting).
    hold_at: tuple[int, ...] = ()
    resume: threading.Semaphore = field(default_factory=lambda: threading.Semaphore(0))
    published: int = 0
    events: list[UsageEvent] = field(default_factory=list)  # each unique call, once
    # the longest single publish() call since the test last reset it: a publisher that waits
    # for the broker shows up here, however slowly a busy machine generates the traffic
    slowest_publish_s: float = 0.0
    stats: list[dict[str, Any]] = field(default_factory=list)
    manifest: Manifest = field(default_factory=lambda: Manifest(price=PRICER))
    error: BaseException | None = None
    _thread: threading.Thread | None = None

    def start(self) -> Stream:
        self._thread = threading.Thread(target=self._run, name="stream", daemon=True)
        self._thread.start()
        return self

    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def join(self, timeout: float = 180.0) -> Manifest:
        assert self._thread is not None
        if self.hold_at:
            self.resume.release(len(self.hold_at))  # no hold left waits
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the publishing thread did not finish"
        if self.error is not None:
            raise self.error
        return self.manifest

    def _run(self) -> None:
        try:
            asyncio.run(self._publish())
        except BaseException as exc:
            self.error = exc

    async def _publish(self) -> None:
        pubs = [
            UsagePublisher(self.settings.model_copy(update={"producer_spool_name": f"svc-{i}"}))
            for i in range(self.publishers)
        ]
        for pub in pubs:
            await pub.start()
        try:
            started = time.monotonic()
            for item in generate(self.cfg):
                if item.rename is not None:
                    await pubs[0].publish_rename(item.rename)
                elif item.call is not None:
                    # one service per source: chat, agent and memory publish independently
                    index = ["chat", "agent", "memory"].index(item.call.source.value)
                    begun = time.monotonic()
                    await pubs[index % len(pubs)].publish(item.call)
                    took = time.monotonic() - begun
                    self.slowest_publish_s = max(self.slowest_publish_s, took)
                self.manifest.record(item)
                if item.call is not None and not item.duplicate:
                    self.published += 1
                    self.events.append(item.call)
                    if self.published in self.hold_at:
                        held = time.monotonic()
                        await asyncio.to_thread(self.resume.acquire, True, 300)
                        started += time.monotonic() - held
                    ahead = self.published / self.rate - (time.monotonic() - started)
                    if ahead > 0:
                        await asyncio.sleep(ahead)
            for pub in pubs:
                await pub.flush()
            for pub in pubs:
                if not await pub.wait_replayed(90):
                    raise AssertionError(f"spool not replayed: {pub.snapshot()}")
        finally:
            for pub in pubs:
                await pub.stop()
                self.stats.append(pub.snapshot())
