"""A spike replayed live through every real part: publisher, worker, ClickHouse, the
``llm-usage alerter`` process, the alerts topic and a webhook receiver.

A week of normal history is ingested first; then one agent starts calling far more
expensively than it ever did, and the worker is SIGKILLed in the middle of that spike and
replaced. The alert must come while the spike's first 240 calls are published (two a
second: 2 minutes), exist exactly once (in ClickHouse, and on the topic after dropping
repeats by key), and reach a webhook that fails its first two deliveries: exactly once after
dedupe, with a valid signature. The delay from the first spike event to the alert is a
figure of the run, not a wall-clock bound.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from llm_usage.clickhouse import connect
from llm_usage.localstack.processes import free_port
from llm_usage.runner import AlerterProcess
from llm_usage.settings import Settings
from llm_usage.simulate import SimulationConfig, publish
from producers.publisher import UsagePublisher
from producers.topics import ensure_topics
from query_api.app import create_app
from stream_processor.alerts.webhooks import SIGNATURE_HEADER, verify
from stream_processor.harness import WorkerProcess
from tests.conftest import wait_for
from tests.integration.alerting import expensive_call, fast_settings, stored_calls
from tests.integration.test_processor_e2e import read_topic

KEY = {"Authorization": "Bearer key-live"}


class Receiver:
    """A webhook endpoint that fails the first ``fail_first`` attempts of every alert."""

    def __init__(self, fail_first: int = 2) -> None:
        self.secret = ""
        self.fail_first = fail_first
        self.attempts: Counter[str] = Counter()
        self.accepted: list[dict[str, Any]] = []
        self.bad_signatures = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                key = self.headers["Idempotency-Key"]
                if not verify(receiver.secret, body, self.headers[SIGNATURE_HEADER]):
                    receiver.bad_signatures += 1
                receiver.attempts[key] += 1
                if receiver.attempts[key] <= receiver.fail_first:
                    self.send_response(500)
                else:
                    if key not in {a["key"] for a in receiver.accepted}:
                        receiver.accepted.append({"key": key, **json.loads(body)})
                    self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    hook = Receiver()
    yield hook
    hook.close()


def _alerts_of_agent(settings: Settings, agent: str) -> list[tuple[str, datetime]]:
    client = connect(settings)
    try:
        rows = client.query(
            "SELECT alert_id, raised_at FROM alerts FINAL WHERE kind = 'spike_started'"
            " AND source_id = {agent:String}",
            parameters={"agent": agent},
        ).result_rows
    finally:
        client.close()
    return [(str(r[0]), r[1]) for r in rows]


def _evaluations(alerter: AlerterProcess) -> int:
    """Evaluations the alerter logged (one line per tick that judged something)."""
    return alerter.log_path.read_text().count("alerter: judged")


def _quiet_agent(settings: Settings) -> str:
    """An agent with a normal week behind it and no alert in it (the detector's false
    alerts on normal weeks are measured elsewhere: `llm-usage bench alerts`)."""
    client = connect(settings)
    try:
        rows = client.query(
            "SELECT source_id FROM usage_hourly WHERE tenant_id = 'tenant-1'"
            " AND source = 'agent' GROUP BY source_id HAVING uniqExact(hour) >= 10"
            " AND source_id NOT IN (SELECT source_id FROM alerts) ORDER BY source_id"
        ).result_rows
    finally:
        client.close()
    assert rows, "no agent with a quiet normal week"
    return str(rows[0][0])


@pytest.mark.sharded
def test_live_spike_alerts_within_two_minutes_once_despite_a_worker_sigkill(
    migrated: Settings,
    worker_factory: Callable[[Settings], WorkerProcess],
    receiver: Receiver,
    tmp_path: Path,
    figure: Callable[[str], None],
) -> None:
    settings = fast_settings(migrated, api_keys="key-live:tenant-1", alert_interval_s=2.0)
    asyncio.run(
        ensure_topics(
            settings,
            [
                settings.topic_calls,
                settings.topic_entities,
                settings.topic_dead_letter,
                settings.topic_alerts,
            ],
        )
    )
    worker = worker_factory(settings)
    worker.wait_assigned(timeout=90)
    history = SimulationConfig(
        calls=8_000,
        days=7,
        tenants=1,
        seed=7,
        spike=False,
        end=datetime.now(UTC) - timedelta(minutes=5),
    )
    manifest = asyncio.run(publish(settings, history))
    wait_for(
        lambda: stored_calls(settings) >= manifest.total.calls,
        120,
        "the history",
        detail=worker.tail,
    )

    api = TestClient(create_app(settings))
    hook = api.post("/v1/webhooks", json={"url": receiver.url}, headers=KEY)
    assert hook.status_code == 201, hook.text
    receiver.secret = hook.json()["secret"]
    alerter = AlerterProcess(settings, tmp_path / "alerter.log").start()
    try:
        wait_for(
            lambda: "tenant-hours" in alerter.log_path.read_text(),
            90,
            "the alerter to judge the history",
            detail=alerter.tail,
        )
        agent = _quiet_agent(settings)

        async def spike() -> tuple[float, float | None]:
            first = time.time()
            seen: float | None = None
            async with UsagePublisher(settings) as publisher:
                for n in range(240):  # up to 2 minutes, two calls a second
                    await publisher.publish(
                        expensive_call("tenant-1", "agent", agent, datetime.now(UTC))
                    )
                    if n == 6:  # in the middle of the spike: the worker dies, another starts
                        await publisher.flush()
                        worker.kill()
                        worker_factory(settings)
                    await asyncio.sleep(0.5)
                    if n % 4 == 0 and await asyncio.to_thread(_alerts_of_agent, settings, agent):
                        seen = time.time()
                        break
                await publisher.flush()
            return first, seen

        first, seen = asyncio.run(spike())
        assert seen is not None, f"no alert during the spike's 240 calls:\n{alerter.tail()}"
        figure(
            f"live spike: first event to alert in ClickHouse {seen - first:.1f} s (alerter"
            f" every {settings.alert_interval_s:g} s; worker SIGKILLed after the 7th event)"
        )

        # Three more evaluations, each begun after the alert was seen: still one alert. (The
        # open spike is judged again on every tick, so every tick logs a line.)
        after = _evaluations(alerter) + 4  # the tick under way may have begun before
        wait_for(
            lambda: _evaluations(alerter) >= after,
            60,
            "three more evaluations of the alerter",
            detail=alerter.tail,
        )
        stored = _alerts_of_agent(settings, agent)
        assert len(stored) == 1, stored
        alert_id = stored[0][0]
        records = asyncio.run(read_topic(settings, settings.topic_alerts, 1))
        on_topic = [json.loads(r.value) for r in records]
        spikes = {a["alert_id"] for a in on_topic if a["source_id"] == agent}
        assert spikes == {alert_id}, on_topic
        assert all(r.key.decode() == json.loads(r.value)["alert_id"] for r in records)

        wait_for(
            lambda: any(a["alert_id"] == alert_id for a in receiver.accepted),
            60,
            "the webhook delivery",
            detail=alerter.tail,
        )
        assert receiver.bad_signatures == 0
        delivered = [a for a in receiver.accepted if a["alert_id"] == alert_id]
        assert len(delivered) == 1 and receiver.attempts[delivered[0]["key"]] == 3
        assert delivered[0]["kind"] == "spike_started" and "source_name" in delivered[0]
        listed = api.get("/v1/alerts?kind=spike_started", headers=KEY).json()["items"]
        assert [a["alert_id"] for a in listed if a["source_id"] == agent] == [alert_id]

        # every alert raised since the webhook exists reaches it (each was refused twice
        # first), and after dedupe by Idempotency-Key each is there exactly once
        since = datetime.fromisoformat(hook.json()["created_at"])
        raised = {
            a["alert_id"]
            for a in api.get("/v1/alerts?limit=1000", headers=KEY).json()["items"]
            if datetime.fromisoformat(a["raised_at"]) >= since
        }

        def delivered_ids() -> list[str]:
            return [a["alert_id"] for a in receiver.accepted]

        wait_for(
            lambda: raised <= set(delivered_ids()),
            60,
            "every alert at the webhook",
            detail=alerter.tail,
        )
        assert sorted(delivered_ids()) == sorted(raised), "each alert once, none from before"
        assert all(receiver.attempts[a["key"]] >= 3 for a in receiver.accepted)
        figure(f"webhook: {len(raised)} alert(s) delivered, each once after two refusals")
        assert receiver.bad_signatures == 0
    finally:
        alerter.stop()
