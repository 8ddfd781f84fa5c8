"""``POST /v1/events`` end to end: a real ingest process, the real broker, a worker and
ClickHouse; what the API then reports equals what was posted, to the last pico-dollar."""

from __future__ import annotations

import gzip
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest

from llm_usage.localstack.processes import free_port
from llm_usage.runner import IngestProcess
from llm_usage.settings import Settings
from producers.contract import UsageEvent
from query_api.keys import KeyStore, Scope
from stream_processor.harness import WorkerProcess
from tests.conftest import wait_for
from tests.integration.test_processor_e2e import (
    cost_of,
    counted,
    expected_totals,
    make_events,
    totals,
    worker_settings,
)

pytestmark = pytest.mark.integration


def wire(event: UsageEvent, *, tenant: bool = True) -> dict[str, Any]:
    """An event as a non-Python service would send it (plain JSON, optional fields left out)."""
    body: dict[str, Any] = json.loads(event.to_json())
    if not tenant:
        del body["tenant_id"]
    return body


def one_event() -> dict[str, Any]:
    """A valid event of tenant t1 from an hour ago."""
    return wire(make_events(2, datetime.now(UTC) - timedelta(hours=1), tenant="t1")[1])


def post(ingest: IngestProcess, key: str, body: bytes, content_type: str) -> httpx.Response:
    return httpx.post(
        f"{ingest.base_url}/v1/events",
        content=body,
        headers={"Authorization": f"Bearer {key}", "Content-Type": content_type},
        timeout=30,
    )


def test_json_array_and_ndjson_events_are_counted_exactly_bad_ones_rejected_by_index(
    migrated: Settings,
    worker_factory: Callable[[Settings], WorkerProcess],
    ingest_factory: Callable[..., IngestProcess],
    new_key: Callable[..., str],
) -> None:
    settings = worker_settings(migrated)
    ingest = ingest_factory(settings)
    key = new_key("t1", Scope.INGEST)
    start = datetime.now(UTC) - timedelta(days=2)
    events = [e for e in make_events(90, start, tenant="t1") if e.tenant_id == "t1"]
    array, lines = events[:40], events[40:]

    bad = [
        {**wire(events[0]), "tenant_id": "t2"},  # another tenant's event: refused
        {**wire(events[1]), "input_tokens": -5},
        "not an object",
    ]
    body = json.dumps([wire(e, tenant=i % 2 == 0) for i, e in enumerate(array)] + bad).encode()
    first = post(ingest, key, body, "application/json")
    assert first.status_code == 202, first.text
    answer = first.json()
    assert answer["accepted"] == len(array)
    reasons = {r["index"]: r["reason"] for r in answer["rejected"]}
    assert sorted(reasons) == [40, 41, 42]
    assert "tenant_id" in reasons[40] and "does not match" in reasons[40]
    assert "input_tokens" in reasons[41] and "greater than or equal to 0" in reasons[41]
    assert "JSON object" in reasons[42]

    ndjson = b"\n".join(json.dumps(wire(e, tenant=False)).encode() for e in lines) + b"\n"
    second = post(ingest, key, ndjson, "application/x-ndjson")
    assert second.status_code == 202, second.text
    assert second.json() == {"accepted": len(lines), "rejected": []}
    # A retry of a request (say after a lost 202) is accepted again and counted once.
    assert post(ingest, key, ndjson, "application/x-ndjson").status_code == 202

    worker = worker_factory(settings)
    expected = expected_totals(events, [cost_of(e) for e in events])
    wait_for(
        lambda: counted(settings, len(events)),
        90,
        "every posted event",
        detail=worker.tail,
    )
    wait_for(
        lambda: worker.metrics()["llm_usage_processor_events_deduped_total"] >= len(lines),
        30,
        "the retried request to be deduplicated",
    )
    got = totals(settings)
    assert got["raw"] == expected and got["hourly"] == expected and got["daily"] == expected
    assert Decimal(got["raw"][6]) == sum((cost_of(e) for e in events), Decimal(0))


def test_bad_bodies_get_clear_4xx_answers(
    migrated: Settings,
    ingest_factory: Callable[..., IngestProcess],
    new_key: Callable[..., str],
) -> None:
    ingest = ingest_factory(migrated, ingest_max_body_bytes=64 * 1024, ingest_max_events=100)
    key = new_key("t1", Scope.INGEST)
    event = one_event()

    broken = post(ingest, key, b"[{not json", "application/json")
    assert broken.status_code == 400 and "not valid JSON" in broken.json()["detail"]
    empty = post(ingest, key, b"[]", "application/json")
    assert empty.status_code == 400 and "no events" in empty.json()["detail"]
    all_bad = post(ingest, key, json.dumps([{"model": "x"}]).encode(), "application/json")
    assert all_bad.status_code == 422
    assert all_bad.json()["accepted"] == 0 and all_bad.json()["rejected"][0]["index"] == 0
    too_big = post(ingest, key, b"[" + b" " * 70_000 + b"]", "application/json")
    assert too_big.status_code == 413 and "exceeds the limit" in too_big.json()["detail"]
    too_many = post(ingest, key, json.dumps([event] * 101).encode(), "application/json")
    assert too_many.status_code == 413 and "101 events" in too_many.json()["detail"]
    no_id = post(
        ingest, key, json.dumps([{**event, "event_id": None}]).encode(), "application/json"
    )
    assert no_id.status_code == 422 and "event_id" in no_id.json()["rejected"][0]["reason"]
    deep = post(ingest, key, b"[" * 5000 + b"]" * 5000, "application/json")
    assert deep.status_code == 400, deep.text
    odd = post(
        ingest, key, json.dumps([{**event, "schema_version": [1]}]).encode(), "application/json"
    )
    assert odd.status_code == 422 and "schema_version" in odd.json()["rejected"][0]["reason"]
    packed = httpx.post(
        f"{ingest.base_url}/v1/events",
        content=gzip.compress(json.dumps([event]).encode()),
        headers={
            "Authorization": f"Bearer {key}",
            "Content-Type": "application/json",
            "Content-Encoding": "gzip",
        },
        timeout=30,
    )
    assert packed.status_code == 202 and packed.json()["accepted"] == 1, packed.text
    bomb = httpx.post(
        f"{ingest.base_url}/v1/events",
        content=gzip.compress(b" " * 200_000),
        headers={"Authorization": f"Bearer {key}", "Content-Encoding": "gzip"},
        timeout=30,
    )
    assert bomb.status_code == 413 and "decompressed" in bomb.json()["detail"]
    single = post(ingest, key, json.dumps(event).encode(), "application/json")
    assert single.status_code == 202 and single.json()["accepted"] == 1


def test_rate_limit_per_key_answers_429_with_retry_after(
    migrated: Settings,
    ingest_factory: Callable[..., IngestProcess],
    new_key: Callable[..., str],
) -> None:
    ingest = ingest_factory(migrated, ingest_rate_events_per_s=10.0, ingest_rate_burst_s=2.0)
    key, other = new_key("t1", Scope.INGEST), new_key("t1", Scope.INGEST)
    events = make_events(30, datetime.now(UTC) - timedelta(hours=1), step=timedelta(seconds=9))
    body = json.dumps([wire(e) for e in events if e.tenant_id == "t1"][:15]).encode()
    assert post(ingest, key, body, "application/json").status_code == 202  # the burst: 20
    limited = post(ingest, key, body, "application/json")
    assert limited.status_code == 429
    assert int(limited.headers["Retry-After"]) >= 1
    assert "rate limit" in limited.json()["detail"]
    assert post(ingest, other, body, "application/json").status_code == 202  # per key


def test_kafka_unreachable_answers_503_and_accepts_nothing(
    migrated: Settings,
    ingest_factory: Callable[..., IngestProcess],
    new_key: Callable[..., str],
) -> None:
    nowhere = f"127.0.0.1:{free_port()}"
    ingest = ingest_factory(
        migrated, wait=False, kafka_bootstrap=nowhere, ingest_kafka_timeout_s=2.0
    )
    key = new_key("t1", Scope.INGEST)
    wait_for(lambda: _answers(f"{ingest.base_url}/healthz"), 60, "the ingest process")
    event = one_event()
    down = post(ingest, key, json.dumps([event]).encode(), "application/json")
    assert down.status_code == 503, down.text
    assert "unreachable" in down.json()["detail"] and down.headers["Retry-After"]
    ready = httpx.get(f"{ingest.base_url}/readyz", timeout=30)
    assert ready.status_code == 503 and nowhere in ready.json()["detail"]


def test_keys_cli_creates_lists_and_revokes_hashed_keys(
    migrated: Settings,
    ingest_factory: Callable[..., IngestProcess],
    key_store: KeyStore,
) -> None:
    import subprocess
    import sys

    from llm_usage.children import settings_env

    env = {**settings_env(migrated), "PATH": "/usr/bin:/bin", "COLUMNS": "200"}

    def cli(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "llm_usage", "keys", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    created = cli("create", "--tenant", "t1", "--scope", "ingest", "--name", "ci")
    plain = created.strip().splitlines()[-1]
    assert plain.startswith("llmu_")
    key_id = plain.split("_")[1]
    listing = cli("list")
    assert key_id in listing and "ingest" in listing and plain not in listing
    stored = key_store.list("t1")
    assert [k.key_id for k in stored] == [key_id]
    assert plain.split("_", 2)[2] not in repr(key_store.db.rows("SELECT * FROM api_keys", {}))

    ingest = ingest_factory(migrated)
    event = one_event()
    body = json.dumps([event]).encode()
    assert post(ingest, plain, body, "application/json").status_code == 202
    assert f"revoked {key_id}" in cli("revoke", key_id)
    time.sleep(0.1)
    revoked = post(ingest, plain, body, "application/json")
    assert revoked.status_code == 401 and "revoked" in revoked.json()["detail"]
    assert key_id not in cli("list") and key_id in cli("list", "--revoked")


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
