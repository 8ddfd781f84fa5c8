"""``LLM_USAGE_TEST_INFRA=containers``: containers where Docker runs, a said fallback here.

This machine has the docker CLI but no engine, so the containers path itself cannot run
here; what is proven is that asking for it is never silently ignored: the session warns
(and logs) why and runs on the local stack, and ``containers-only`` refuses to run.
"""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from llm_usage.localstack import LocalStack
from llm_usage.settings import Settings
from tests.containers import (
    INFRA_ENV,
    DockerUnavailable,
    InfraFallbackWarning,
    containers_or_none,
    docker_unavailable_reason,
    requested_infra,
)

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def no_docker() -> str:
    reason = docker_unavailable_reason()
    if reason is None:
        pytest.skip("a Docker engine answers here: the containers path runs instead")
    return reason


def test_default_is_the_local_stack(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(INFRA_ENV, raising=False)
    assert requested_infra() == "local"
    assert containers_or_none(Settings()) is None
    monkeypatch.setenv(INFRA_ENV, "kubernetes")
    with pytest.raises(ValueError, match=INFRA_ENV):
        requested_infra()


def test_containers_without_docker_warn_and_fall_back(
    monkeypatch: pytest.MonkeyPatch, no_docker: str, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv(INFRA_ENV, "containers")
    with pytest.warns(InfraFallbackWarning, match="local stack") as record:
        assert containers_or_none(Settings()) is None
    (warning,) = [w for w in record if w.category is InfraFallbackWarning]
    assert "no Docker engine answers" in str(warning.message)
    assert any("falls back" in r.message or "local stack" in r.message for r in caplog.records)


def test_containers_only_refuses_without_docker(
    monkeypatch: pytest.MonkeyPatch, no_docker: str
) -> None:
    monkeypatch.setenv(INFRA_ENV, "containers-only")
    with pytest.raises(DockerUnavailable, match="no Docker engine"):
        containers_or_none(Settings())


def test_session_stack_serves_the_suite(stack: LocalStack) -> None:
    """Run by the subprocess below with containers asked for (and normally, as a check)."""
    url = f"{stack.settings.clickhouse_url}/ping"
    with urllib.request.urlopen(url, timeout=5) as response:
        assert response.read().strip() == b"Ok."
    assert stack.broker_ready()
    expected = os.environ.get("LLM_USAGE_TEST_EXPECT_INFRA")
    if expected:
        assert type(stack).__name__ == expected


def test_whole_session_falls_back_to_the_local_stack(no_docker: str, tmp_path: Path) -> None:
    """A real pytest session with containers asked for: it says so and runs locally."""
    env = {
        **os.environ,
        INFRA_ENV: "containers",
        "LLM_USAGE_TEST_EXPECT_INFRA": "LocalStack",
    }
    target = f"{Path(__file__).relative_to(ROOT)}::test_session_stack_serves_the_suite"
    result = subprocess.run(
        [sys.executable, "-m", "pytest", target, "-q", "-p", "no:cacheprovider",
         "--basetemp", str(tmp_path / "inner")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "1 passed" in output, output
    assert "InfraFallbackWarning" in output and "no Docker engine answers" in output, output


class _FakeContainer:
    """Stands in for a testcontainers container: records its configuration, runs nothing."""

    def __init__(self, image: str, **kwargs: object) -> None:
        self.image, self.kwargs = image, kwargs
        self.env: dict[str, str] = {}
        self.ports: dict[int, int] = {}
        self.started = self.stopped = False

    def with_env(self, key: str, value: str) -> _FakeContainer:
        self.env[key] = value
        return self

    def with_bind_ports(self, container: int, host: int) -> _FakeContainer:
        self.ports[container] = host
        return self

    def start(self) -> _FakeContainer:
        self.started = True
        return self

    def stop(self) -> None:
        self.stopped = True

    def exec(self, command: list[str]) -> object:
        from types import SimpleNamespace

        return SimpleNamespace(exit_code=0, output=b"")


def test_containers_path_wires_the_settings(
    monkeypatch: pytest.MonkeyPatch, stack: LocalStack
) -> None:
    """Where Docker runs: the images, ports and credentials reach the settings.

    Docker is faked (none here); the "containers" answer on the session stack's ports, so
    the readiness checks are real.
    """
    import testcontainers.community.clickhouse as tc_clickhouse
    import testcontainers.core.container as tc_container
    import testcontainers.core.waiting_utils as tc_waiting

    from tests import containers

    made: list[_FakeContainer] = []

    class Kafka(_FakeContainer):
        def __init__(self, image: str, **kwargs: object) -> None:
            super().__init__(image, **kwargs)
            made.append(self)

    class ClickHouse(Kafka):
        def get_container_host_ip(self) -> str:
            return stack.settings.clickhouse_host

        def get_exposed_port(self, port: int) -> int:
            assert port == 8123
            return stack.settings.clickhouse_port

    monkeypatch.setattr(tc_container, "DockerContainer", Kafka)
    monkeypatch.setattr(tc_clickhouse, "ClickHouseContainer", ClickHouse)
    monkeypatch.setattr(tc_waiting, "wait_for_logs", lambda *a, **k: 0.0)
    monkeypatch.setattr(containers, "docker_unavailable_reason", lambda: None)
    monkeypatch.setattr(containers, "free_port", lambda: stack.settings.kafka_host_port[1])
    monkeypatch.setenv(INFRA_ENV, "containers-only")

    result = containers_or_none(stack.settings)
    assert isinstance(result, containers.ContainerStack)
    kafka, clickhouse = made
    assert kafka.image.startswith("apache/kafka:") and kafka.started
    port = stack.settings.kafka_host_port[1]
    assert kafka.ports == {9092: port}
    assert kafka.env["KAFKA_ADVERTISED_LISTENERS"] == f"PLAINTEXT://127.0.0.1:{port}"
    assert kafka.env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert kafka.env["CLUSTER_ID"] == result.cluster_id
    assert clickhouse.image.startswith("clickhouse/clickhouse-server:") and clickhouse.started
    assert result.settings.kafka_bootstrap == f"127.0.0.1:{port}"
    assert result.settings.clickhouse_url == stack.settings.clickhouse_url
    assert result.settings.clickhouse_password == clickhouse.kwargs["password"]
    assert len(str(clickhouse.kwargs["password"])) >= 32  # random per session, not "test"
    assert [s.running for s in result.status()] == [True, True]
    assert result.down() == ["broker", "clickhouse"] and kafka.stopped and clickhouse.stopped
