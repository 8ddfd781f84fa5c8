"""Worker crashes mid-stream: SIGKILL (no flush, no commit, no goodbye), restart, exact totals.

Traffic is the demo simulation (3 tenants, chat/agent/memory, renames, ~1% exact duplicates
published again as at-least-once producers do), published at a steady pace while the worker
consumes it. A kill can land anywhere: between recording a batch's range and inserting it,
after the insert but before the offset commit, while the dedupe table's changelog lags. The
raw table and both rollups must still equal the manifest exactly: every unique call once.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from llm_usage.localstack.processes import free_port
from llm_usage.settings import Settings
from llm_usage.simulate import SimulationConfig
from stream_processor.harness import WorkerProcess
from tests.reliability.conftest import (
    Stream,
    assert_exact,
    assert_never_crashed,
    fast_worker,
    raw_count,
    wait_for,
    written,
)

pytestmark = pytest.mark.integration

CALLS = 30_000


def _busy(worker: WorkerProcess, rows: int, timeout: float) -> None:
    """Wait until ``worker`` owns partitions and ClickHouse acknowledged ``rows`` rows of its
    own inserts: never kill a worker that is still starting.

    Its own counter, not the table's row count: an insert of the worker killed before it can
    still land after that kill, and would pass for the new worker's first write.
    """
    worker.wait_assigned(timeout=timeout)
    wait_for(
        lambda: written(worker) >= rows,
        timeout,
        f"the worker to write {rows} rows",
        detail=worker.tail,
    )


@pytest.mark.timeout(300)
def test_worker_sigkilled_three_times_mid_stream_totals_exact(
    migrated: Settings,
    worker_factory: Callable[[Settings], WorkerProcess],
    rng: random.Random,
) -> None:
    """Three SIGKILLs at random moments of a 30,000-call stream, each followed by a restart:
    each once the worker had a random number of rows stored (the seed is printed).

    A restarted worker joins the group only once the killed member's session (6 s) has
    expired, about 10 s after the kill; the stream is paced (~33 s) so that the kills land
    while calls are still being published, not only while a backlog is drained. On a slow
    machine the stream also holds before its 10,000th, 20,000th and 27,000th call until the
    next kill is done, so every kill lands before the last call is written.
    """
    settings = fast_worker(migrated, processor_session_timeout_s=6.0)
    cfg = SimulationConfig(calls=CALLS, days=3, seed=rng.randrange(1 << 30), tenants=3)
    worker = worker_factory(settings)
    worker.wait_assigned(timeout=90)
    paced = settings.model_copy(update={"producer_linger_ms": 100})
    stream = Stream(paced, cfg, rate=900, hold_at=(10_000, 20_000, 27_000)).start()
    kills = []
    for _ in range(3):
        # Up to 2,000 rows are always there for each worker: the first has 10,000 calls before
        # the stream's first hold, and each kill lets the stream on to its next hold.
        _busy(worker, rng.randint(1, 2_000), 90)
        worker.kill()
        rows = raw_count(settings)  # what the killed worker got stored (no other one runs)
        kills.append((stream.published, rows))
        assert rows < CALLS, "the kill must land before every call is written"
        stream.resume.release()  # lets the stream pass one hold, now or when it gets there
        worker = worker_factory(settings)
    manifest = stream.join()
    print(f"kills at (calls published, rows written): {kills}")
    assert manifest.total.calls == CALLS and manifest.duplicates_published > 0
    assert sum(1 for published, _ in kills if published < CALLS) >= 2, kills
    want = assert_exact(settings, manifest, timeout=150, worker=worker)
    assert worker.running()
    metrics = worker.metrics()
    print(f"expected = observed = {want}; last worker: written "
          f"{metrics['llm_usage_processor_events_written_total']:.0f}, deduped "
          f"{metrics['llm_usage_processor_events_deduped_total']:.0f}")  # fmt: skip


@pytest.mark.timeout(180)
def test_two_workers_one_sigkilled_survivor_takes_over_totals_exact(
    migrated: Settings,
    worker_factory: Callable[[Settings], WorkerProcess],
    rng: random.Random,
) -> None:
    settings = fast_worker(migrated, processor_session_timeout_s=6.0)
    one = worker_factory(settings)
    two = worker_factory(settings.model_copy(update={"processor_web_port": free_port()}))

    def split() -> bool:
        a, b = one.health(), two.health()
        return bool(a and b and a["assigned"] and b["assigned"])

    wait_for(split, 90, "both workers to own partitions")
    cfg = SimulationConfig(calls=20_000, days=2, seed=rng.randrange(1 << 30), tenants=3)
    stream = Stream(settings, cfg, rate=2500, hold_at=(12_000,)).start()
    rows = rng.randint(1_000, 8_000)  # the random moment of the kill (the stream holds at 12,000)
    wait_for(
        lambda: written(one) > 0 and written(two) > 0 and raw_count(settings) >= rows,
        60,
        f"both workers to write, {rows} rows in all",
    )
    victim, survivor = (one, two) if rng.random() < 0.5 else (two, one)
    health = victim.health() or {}
    taken = health.get("assigned") or []
    victim.kill()
    killed_at = (stream.published, raw_count(settings))
    print(f"killed the owner of partitions {taken} at (published, rows) {killed_at}")
    assert stream.running(), "the kill must land while the stream flows"
    stream.resume.release()
    everything = list(range(settings.topic_partitions))
    wait_for(
        lambda: (survivor.health() or {}).get("assigned") == everything,
        60,
        "the survivor to own every partition",
        detail=survivor.tail,
    )
    manifest = stream.join()
    want = assert_exact(settings, manifest, timeout=120, worker=survivor)
    print(f"expected = observed = {want}")
    assert_never_crashed(survivor)  # its recovery after the rebalance included
