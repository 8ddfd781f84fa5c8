"""Outages of the two services the pipeline depends on, while traffic keeps flowing.

Both tests run on a stack of their own (free ports, temporary folder): the session's broker
and ClickHouse are shared by every test and are never stopped.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from llm_usage.clickhouse import apply_migrations, connect
from llm_usage.localstack import LocalStack
from llm_usage.localstack.processes import free_port
from llm_usage.settings import Settings
from llm_usage.simulate import SimulationConfig
from query_api.app import create_app
from stream_processor.harness import WorkerProcess
from tests.reliability.conftest import (
    Stream,
    assert_exact,
    assert_never_crashed,
    fast_worker,
    raw_count,
    wait_for,
)
from tests.reliability.faults import RelayedBroker

pytestmark = pytest.mark.integration

KEYS = "key-1:tenant-1,key-2:tenant-2,key-3:tenant-3"
CLICKHOUSE_DOWN_S = 20.0
BROKER_DOWN_S = 10.0


def _summary_matches_manifest(client: TestClient, settings: Settings, stream: Stream) -> None:
    """Every tenant's /summary equals its part of the manifest, to the last pico-dollar."""
    now = datetime.now(UTC)
    window = {"from": (now - timedelta(days=4)).isoformat(),
              "to": (now + timedelta(minutes=5)).isoformat()}  # fmt: skip
    for key, tenant in settings.api_key_tenants.items():
        want = stream.manifest.by_tenant[tenant]
        response = client.get("/v1/usage/summary", params=window,
                              headers={"Authorization": f"Bearer {key}"})  # fmt: skip
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["calls"] == want.calls, tenant
        assert Decimal(body["total_cost_usd"]) == want.cost_usd, tenant
        assert body["input_tokens"] == want.input_tokens, tenant
        assert body["unpriced_calls"] == want.unpriced_calls, tenant


@pytest.mark.timeout(240)
def test_clickhouse_outage_20s_worker_backs_off_api_503_totals_exact(
    own_stack: LocalStack,
    worker_factory: Callable[[Settings], WorkerProcess],
    rng: random.Random,
) -> None:
    """ClickHouse is stopped for 20 s mid-stream, then started again on the same data.

    Meanwhile: the worker keeps running, reports the error on /health and retries with
    backoff; the API answers 503 with a message (never 500) on every /v1 endpoint, /readyz
    is 503 and says why, /healthz stays 200. Afterwards: raw and rollup totals and every
    tenant's API summary equal the manifest exactly.
    """
    settings = fast_worker(own_stack.settings, api_keys=KEYS)
    worker = worker_factory(settings)
    worker.wait_assigned(timeout=90)
    cfg = SimulationConfig(calls=15_000, days=3, seed=rng.randrange(1 << 30), tenants=3)
    # The stream holds at its 5,000th call until the outage has begun: it starts mid-stream
    # however slowly a busy machine publishes and consumes.
    stream = Stream(settings, cfg, rate=1000, hold_at=(5_000,)).start()
    api = TestClient(create_app(settings))
    auth = {"Authorization": "Bearer key-1"}
    assert api.get("/readyz").status_code == 200

    rows = rng.randint(2_000, 4_000)  # the random moment of the outage
    wait_for(lambda: raw_count(settings) >= rows, 60, f"{rows} rows before the outage")
    own_stack.stop_service("clickhouse")
    down_at = time.monotonic()
    published_before = stream.published
    assert stream.running(), "the outage must start while the stream flows"
    stream.resume.release()  # and it flows on during the outage
    try:
        for path in ("/v1/usage/summary", "/v1/usage/timeseries", "/v1/usage/by-source",
                     "/v1/usage/top", "/v1/usage/records"):  # fmt: skip
            response = api.get(path, headers=auth)
            assert response.status_code == 503, (path, response.status_code, response.text)
            assert "unreachable" in response.json()["detail"], response.text
            assert response.headers.get("retry-after")
        ready = api.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["status"] == "unavailable"
        assert "ClickHouse" in ready.json()["detail"] and "unreachable" in ready.json()["detail"]
        assert api.get("/healthz").status_code == 200
        wait_for(lambda: bool((worker.health() or {}).get("clickhouse_error")), 15,
                 "the worker to report ClickHouse on /health")  # fmt: skip
        while time.monotonic() - down_at < CLICKHOUSE_DOWN_S:
            assert worker.running(), worker.tail()
            time.sleep(0.5)
        published_during = stream.published - published_before
        assert published_during > 0, "services kept publishing during the outage"
    finally:
        own_stack.start_service("clickhouse")
    print(f"ClickHouse down {time.monotonic() - down_at:.1f}s; {published_during} calls "
          f"published meanwhile")  # fmt: skip

    manifest = stream.join()
    want = assert_exact(settings, manifest, timeout=150, worker=worker)
    print(f"expected = observed = {want}")
    assert_never_crashed(worker)
    wait_for(lambda: (worker.health() or {}).get("clickhouse_error") is None, 30,
             "the worker to clear its ClickHouse error")  # fmt: skip
    assert api.get("/readyz").status_code == 200
    _summary_matches_manifest(api, settings, stream)
    assert worker.metrics()["llm_usage_processor_clickhouse_up"] == 1.0


@pytest.mark.timeout(200)
@pytest.mark.parametrize("fault", ["unreachable", "hung"])
def test_broker_unreachable_10s_services_spool_and_replay_totals_exact(
    fault: str,
    tmp_path: Path,
    worker_factory: Callable[[Settings], WorkerProcess],
    rng: random.Random,
) -> None:
    """The broker is out of reach for 10 s while three services keep publishing.

    What exactly is exercised: the broker *process keeps running with all its data* (Tansu
    is memory-only: a real stop would wipe every topic, offset and Faust changelog and is
    a different fault, covered for the publisher alone by
    tests/integration/test_producers_outage.py). Here every client reaches the broker
    through a relay, and

    - ``unreachable``: the relay is cut: new connections are refused and open ones reset,
      as when a broker host dies or is partitioned away and comes back with its log;
    - ``hung``: the broker is frozen with SIGSTOP: connections stay open, requests are never
      answered, and time out.

    Three services (chat, agent, memory: one publisher and one spool each) publish
    throughout. Events that Kafka does not acknowledge go to their spool and are replayed
    when the broker answers again; the replay may send some events twice, and the worker,
    which also lost the broker for 10 s, drops them by event_id. Raw and rollup totals must
    equal the manifest exactly, and the worker never stops.
    """
    broker = RelayedBroker(tmp_path / "broker").start()
    settings = fast_worker(
        Settings(
            home=tmp_path / "home",
            kafka_bootstrap=broker.bootstrap,
            clickhouse_url=f"http://127.0.0.1:{free_port()}",
            clickhouse_database="reliability",
            topic_calls="calls",
            topic_entities="entities",
            topic_dead_letter="dead-letter",
            producer_request_timeout_ms=2000,
            producer_retry_backoff_ms=200,
        )  # type: ignore[call-arg]
    )
    clickhouse = LocalStack(settings)
    worker: WorkerProcess | None = None
    try:
        clickhouse.start_service("clickhouse")
        apply_migrations(connect(settings, database=""), settings)
        worker = worker_factory(settings)
        worker.wait_assigned(timeout=90)
        cfg = SimulationConfig(calls=15_000, days=2, seed=rng.randrange(1 << 30), tenants=3)
        # held at its 5,000th call until the fault is in place: it lands mid-stream
        stream = Stream(settings, cfg, rate=1000, publishers=3, hold_at=(5_000,)).start()
        rows = rng.randint(1_500, 4_000)  # the random moment of the fault
        wait_for(lambda: raw_count(settings) >= rows, 60, f"{rows} rows before the outage")
        before = stream.published
        assert stream.running()
        stream.slowest_publish_s = 0.0
        started = time.monotonic()
        if fault == "unreachable":
            broker.link.cut()
        else:
            broker.freeze()
        stream.resume.release()  # the services publish on while the broker is out of reach
        try:
            while time.monotonic() - started < BROKER_DOWN_S:
                assert worker.running(), worker.tail()
                time.sleep(0.25)
        finally:
            if fault == "unreachable":
                broker.link.restore()
            else:
                broker.thaw()
        during = stream.published - before
        slowest = stream.slowest_publish_s
        print(
            f"broker {fault} for {time.monotonic() - started:.1f}s; {during} calls published "
            f"meanwhile, the slowest publish() took {slowest * 1000:.0f} ms"
        )
        # The services kept publishing. How many calls that makes depends on the machine's
        # speed (10,000 on a quiet one, 2,705 in one CI run), so the count only has to be
        # non-zero; how long one publish() takes with a hung broker is a figure (printed above,
        # and measured by `llm-usage bench publish`), not a wall-clock bound that a loaded
        # machine breaks.
        assert during > 0, "the services stopped publishing while the broker was out of reach"

        manifest = stream.join(timeout=180)
        spooled = sum(int(s["spooled"]) for s in stream.stats)
        replayed = sum(int(s["replayed"]) for s in stream.stats)
        print(f"publishers: spooled {spooled}, replayed {replayed}; {stream.stats}")
        assert spooled > 0 and replayed >= spooled, stream.stats
        want = assert_exact(settings, manifest, timeout=150, worker=worker, events=stream.events)
        print(f"expected = observed = {want}")
        assert_never_crashed(worker)
    finally:
        if worker is not None:
            worker.stop()  # while the broker still answers: a clean leave, not a 20 s wait
        broker.stop()
        clickhouse.down()
