"""Session infrastructure from Docker images (testcontainers), for machines with Docker.

``LLM_USAGE_TEST_INFRA=containers`` makes the session fixtures (``tests/conftest.py``) run
Apache Kafka (``apache/kafka``, KRaft) and ClickHouse server (``clickhouse/clickhouse-server``)
containers instead of the local stack (Tansu + chdb-core); the tests themselves do not
change. Without a reachable Docker engine the fixtures say so (a warning in the pytest
summary and a log line) and fall back to the local stack: they never pretend.
``LLM_USAGE_TEST_INFRA=containers-only`` fails the session instead of falling back (for CI
runners that do have Docker, so a broken engine cannot silently change what was tested).
"""

from __future__ import annotations

import logging
import os
import secrets
import string
import time
import urllib.request
import uuid
import warnings
from dataclasses import dataclass
from typing import Any

from llm_usage.localstack.processes import free_port, port_open
from llm_usage.localstack.stack import BROKER, CLICKHOUSE, ServiceStatus
from llm_usage.settings import Settings

INFRA_ENV = "LLM_USAGE_TEST_INFRA"
KAFKA_IMAGE = os.environ.get("LLM_USAGE_TEST_KAFKA_IMAGE", "apache/kafka:4.1.0")
CLICKHOUSE_IMAGE = os.environ.get(
    "LLM_USAGE_TEST_CLICKHOUSE_IMAGE", "clickhouse/clickhouse-server:25.8"
)
log = logging.getLogger("llm_usage.tests.infra")
_KAFKA_PROBE = [
    "/opt/kafka/bin/kafka-broker-api-versions.sh", "--bootstrap-server", "localhost:9092",
]  # fmt: skip


class DockerUnavailable(RuntimeError):
    """``containers-only`` was asked for and no Docker engine answers."""


class InfraFallbackWarning(UserWarning):
    """Containers were asked for; the local stack runs instead (and why)."""


def requested_infra() -> str:
    """``local`` (default), ``containers`` or ``containers-only``."""
    value = os.environ.get(INFRA_ENV, "local").strip().lower() or "local"
    if value not in {"local", "containers", "containers-only"}:
        raise ValueError(f"{INFRA_ENV}={value!r}: use local, containers or containers-only")
    return value


def docker_unavailable_reason() -> str | None:
    """Why no Docker engine can run containers here, or None when one answers."""
    try:
        import docker
    except ImportError as exc:  # pragma: no cover - docker comes with testcontainers
        return f"the docker package is missing ({exc})"
    try:
        client = docker.from_env(timeout=5)
        try:
            client.ping()
        finally:
            client.close()
    except Exception as exc:  # DockerException, connection refused, missing socket ...
        return f"no Docker engine answers ({type(exc).__name__}: {exc})"
    return None


@dataclass
class ContainerStack:
    """The subset of ``LocalStack`` the tests use, backed by two containers."""

    settings: Settings
    kafka: Any
    clickhouse: Any
    cluster_id: str
    infra: str = "containers"

    def broker_ready(self) -> bool:
        """The broker answers a Kafka request (Docker's proxy opens the port before it does)."""
        if not port_open(*self.settings.kafka_host_port):
            return False
        try:
            result = self.kafka.exec(_KAFKA_PROBE)
        except Exception:
            return False
        return bool(result.exit_code == 0)

    def clickhouse_ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.settings.clickhouse_url}/ping", timeout=1) as r:
                return bool(r.read().strip() == b"Ok.")
        except OSError:
            return False

    def status(self) -> list[ServiceStatus]:
        return [
            ServiceStatus("kafka (container)", self.broker_ready(), None,
                          self.settings.kafka_bootstrap, "", f"image {KAFKA_IMAGE}"),
            ServiceStatus("clickhouse (container)", self.clickhouse_ready(), None,
                          self.settings.clickhouse_url, "", f"image {CLICKHOUSE_IMAGE}"),
        ]  # fmt: skip

    def _container(self, name: str) -> Any:
        return (self.kafka if name == BROKER else self.clickhouse).get_wrapped_container()

    def stop_service(self, name: str) -> bool:
        self._container(name).stop(timeout=10)
        return True

    def start_service(self, name: str, timeout: float = 60.0) -> None:
        self._container(name).start()
        ready = self.broker_ready if name == BROKER else self.clickhouse_ready
        _wait(ready, timeout, name)

    def down(self) -> list[str]:
        for container in (self.kafka, self.clickhouse):
            container.stop()
        return [BROKER, CLICKHOUSE]


def _wait(ready: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return
        time.sleep(0.2)
    raise RuntimeError(f"{what} container did not answer within {timeout:.0f}s")


def kafka_cluster_id() -> str:
    """A KRaft cluster id (22 base64url characters = 16 bytes) that reads like the local one.

    Fresh per session, as the local launcher's, so dedup tokens never match an old run.
    """
    alphabet = string.ascii_letters + string.digits + "-_"
    # the last character carries 2 of the 128 bits plus 4 padding bits, which must be zero
    return "llm-usage-" + "".join(secrets.choice(alphabet) for _ in range(11)) + "A"


def start_containers(settings: Settings) -> ContainerStack:
    """Start Kafka and ClickHouse containers; ``settings`` (home etc.) pointed at them."""
    from testcontainers.community.clickhouse import ClickHouseContainer
    from testcontainers.core.container import DockerContainer
    from testcontainers.core.waiting_utils import wait_for_logs

    # Fixed host ports chosen up front, so Kafka can advertise the address clients use.
    kafka_port = free_port()
    cluster_id = kafka_cluster_id()
    kafka = (
        DockerContainer(KAFKA_IMAGE)
        .with_bind_ports(9092, kafka_port)
        .with_env("CLUSTER_ID", cluster_id)
        .with_env("KAFKA_NODE_ID", "1")
        .with_env("KAFKA_PROCESS_ROLES", "broker,controller")
        .with_env("KAFKA_LISTENERS", "PLAINTEXT://:9092,CONTROLLER://:9093")
        .with_env("KAFKA_ADVERTISED_LISTENERS", f"PLAINTEXT://127.0.0.1:{kafka_port}")
        .with_env("KAFKA_CONTROLLER_LISTENER_NAMES", "CONTROLLER")
        .with_env("KAFKA_LISTENER_SECURITY_PROTOCOL_MAP",
                  "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT")
        .with_env("KAFKA_CONTROLLER_QUORUM_VOTERS", "1@localhost:9093")
        .with_env("KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR", "1")
        .with_env("KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR", "1")
        .with_env("KAFKA_TRANSACTION_STATE_LOG_MIN_ISR", "1")
        .with_env("KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS", "0")
    )  # fmt: skip
    password = uuid.uuid4().hex
    clickhouse = ClickHouseContainer(CLICKHOUSE_IMAGE, username="llm_usage", password=password)
    kafka.start()
    try:
        clickhouse.start()
    except Exception:
        kafka.stop()
        raise
    ch_url = f"http://{clickhouse.get_container_host_ip()}:{clickhouse.get_exposed_port(8123)}"
    stack = ContainerStack(
        settings=settings.model_copy(
            update={
                "kafka_bootstrap": f"127.0.0.1:{kafka_port}",
                "clickhouse_url": ch_url,
                "clickhouse_user": "llm_usage",
                "clickhouse_password": password,
            }
        ),
        kafka=kafka,
        clickhouse=clickhouse,
        cluster_id=cluster_id,
    )
    try:
        wait_for_logs(kafka, "Kafka Server started", timeout=120)
        _wait(stack.broker_ready, 120, "Kafka")
        _wait(stack.clickhouse_ready, 120, "ClickHouse")
    except Exception:
        stack.down()
        raise
    log.warning("test infrastructure: containers %s and %s", KAFKA_IMAGE, CLICKHOUSE_IMAGE)
    return stack


def containers_or_none(settings: Settings) -> ContainerStack | None:
    """Containers when asked for and Docker answers; None means: use the local stack.

    Asked for without Docker: ``containers`` warns and returns None, ``containers-only``
    raises :class:`DockerUnavailable`.
    """
    mode = requested_infra()
    if mode == "local":
        return None
    reason = docker_unavailable_reason()
    if reason is None:
        return start_containers(settings)
    message = (
        f"{INFRA_ENV}={mode} asked for Kafka and ClickHouse containers, but {reason}; "
        "the tests run against the local stack (Tansu + chdb-core) instead"
    )
    if mode == "containers-only":
        raise DockerUnavailable(message)
    log.warning(message)
    warnings.warn(message, InfraFallbackWarning, stacklevel=2)
    return None
