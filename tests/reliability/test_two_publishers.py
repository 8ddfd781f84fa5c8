"""Two publishers on the same partitions, two workers, one of them SIGKILLed again and again.

Two services publish at once, so every partition has two producers (on the local broker a
fetch can then return a later batch before an earlier one that is still being written:
the worker must re-read, never skip). One worker stays up; the other is killed at random
moments and restarted, so partitions move back and forth mid-stream. Afterwards the raw
table and every rollup equal the manifest of what was published, and nothing more arrives
once both workers have committed everything they read. On 2 shards too (``sharded``).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from decimal import Decimal

import pytest

from llm_usage.clickhouse import connect
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

CALLS = 24_000
KILLS = 3
# Every table that sums calls and cost (rollups fed by materialized views on usage_events).
ROLLUPS = (
    "usage_hourly",
    "usage_daily",
    "usage_api_15m",
    "usage_api_daily",
    "usage_api_models_15m",
    "usage_api_models_1m",
    "usage_api_models_daily",
    "usage_entities_15m",
)


def calls_and_cost(settings: Settings) -> dict[str, tuple[int, Decimal]]:
    client = connect(settings)
    try:
        found = {}
        for table in ("usage_events", *ROLLUPS):
            count = "count()" if table == "usage_events" else "sum(calls)"
            row = client.query(f"SELECT {count}, sum(cost_usd) FROM {table}").result_rows[0]
            found[table] = (int(row[0]), Decimal(row[1]))
        return found
    finally:
        client.close()


def settled(workers: list[WorkerProcess]) -> bool:
    """Every partition is owned, read to its end and committed, with nothing buffered."""
    owned: list[int] = []
    for worker in workers:
        body = worker.health()
        if not body or body.get("buffered_events") or not body.get("assigned"):
            return False
        lag = body.get("lag") or {}
        if sorted(lag) != sorted(str(p) for p in body["assigned"]) or any(lag.values()):
            return False
        if body.get("committed") != body.get("next_offsets"):
            return False
        owned += body["assigned"]
    return sorted(owned) == list(range(workers[0].settings.topic_partitions))


def wait_written(worker: WorkerProcess, rows: int, timeout: float) -> None:
    wait_for(
        lambda: written(worker) >= rows,
        timeout,
        f"{rows} rows stored by the worker",
        detail=worker.tail,
    )


@pytest.mark.sharded
@pytest.mark.timeout(400)
def test_two_publishers_two_workers_one_killed_repeatedly_every_table_exact(
    migrated: Settings,
    worker_factory: Callable[[Settings], WorkerProcess],
    rng: random.Random,
) -> None:
    settings = fast_worker(migrated, processor_session_timeout_s=6.0)
    steady = worker_factory(settings)
    flaky_settings = settings.model_copy(update={"processor_web_port": free_port()})
    flaky = worker_factory(flaky_settings)

    def both_own_partitions() -> bool:
        a, b = steady.health(), flaky.health()
        return bool(a and b and a["assigned"] and b["assigned"])

    wait_for(both_own_partitions, 90, "both workers to own partitions", detail=flaky.tail)
    cfg = SimulationConfig(calls=CALLS, days=2, seed=rng.randrange(1 << 30), tenants=3)
    holds = tuple(CALLS * (k + 1) // (KILLS + 1) for k in range(KILLS))
    stream = Stream(settings, cfg, rate=1500, publishers=2, hold_at=holds).start()
    kills: list[tuple[int, int, object]] = []
    for k in range(KILLS):
        flaky.wait_assigned(timeout=90)
        if k:
            # the restarted worker owns partitions again: let the stream pass its next hold
            stream.resume.release()
        # a random moment of the record/insert/commit cycle: once the flaky worker stored a
        # random number of rows of its own. Its partitions get about half of the 6,000 calls
        # before each hold, but keys are skewed (a soak run: 1,355), so at most 500.
        wait_written(flaky, rng.randint(1, 500), 90)
        taken = (flaky.health() or {}).get("assigned")
        flaky.kill()
        kills.append((stream.published, raw_count(settings), taken))
        flaky = worker_factory(flaky_settings)
    manifest = stream.join()
    print(f"kills at (calls published, rows written, partitions of the killed worker): {kills}")
    assert manifest.total.calls == CALLS and manifest.duplicates_published > 0
    assert all(published < CALLS for published, _, _ in kills), kills
    want = assert_exact(settings, manifest, timeout=180, worker=flaky)
    wait_for(
        lambda: settled([steady, flaky]),
        120,
        "both workers to commit what they read",
        detail=lambda: f"{steady.health()}\n{flaky.health()}",
    )
    # nothing keeps arriving: every table still equals the manifest once all is committed
    expected = (manifest.total.calls, manifest.total.cost_usd)
    for table, found in calls_and_cost(settings).items():
        assert found == expected, f"{table}: {found} != manifest {expected}"
    assert_exact(settings, manifest, timeout=1, worker=flaky)
    print(f"expected = observed = {want}")
    fetches = [
        w.metrics()["llm_usage_processor_out_of_order_fetches_total"] for w in (steady, flaky)
    ]
    print(f"out-of-order fetches re-read (steady, last flaky worker): {fetches}")
    assert_never_crashed(steady)
    assert_never_crashed(flaky)
