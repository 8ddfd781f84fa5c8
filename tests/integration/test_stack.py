"""The local stack starts real services, is idempotent, and stops only its own PIDs."""

from __future__ import annotations

import urllib.request

from llm_usage.localstack import LocalStack
from llm_usage.localstack.processes import free_port, is_running
from llm_usage.settings import Settings


def test_session_stack_answers(stack: LocalStack) -> None:
    statuses = stack.status()
    assert [s.running for s in statuses] == [True, True], statuses
    url = f"{stack.settings.clickhouse_url}/ping"
    with urllib.request.urlopen(url, timeout=5) as response:
        assert response.read() == b"Ok.\n"
    assert stack.cluster_id and stack.cluster_id.startswith("llm-usage-")


def test_up_is_idempotent_and_down_stops_exactly_its_pids(tmp_path) -> None:
    settings = Settings(
        home=tmp_path / "home",
        kafka_bootstrap=f"127.0.0.1:{free_port()}",
        clickhouse_url=f"http://127.0.0.1:{free_port()}",
    )
    local = LocalStack(settings)
    first = local.up()
    try:
        second = local.up()
        assert [s.pid for s in first] == [s.pid for s in second]
        assert all(s.running for s in second)
        pids = [s.pid for s in second]
    finally:
        stopped = local.down()
    assert stopped == ["broker", "clickhouse"]
    assert not any(is_running(pid, "") for pid in pids if pid)
    assert not any(s.running for s in local.status())
    assert local.down() == []  # nothing left to stop


def test_clickhouse_data_survives_restart(tmp_path) -> None:
    settings = Settings(
        home=tmp_path / "home",
        kafka_bootstrap=f"127.0.0.1:{free_port()}",
        clickhouse_url=f"http://127.0.0.1:{free_port()}",
    )
    from llm_usage.clickhouse import connect

    local = LocalStack(settings)
    local.up()
    try:
        client = connect(settings, database="")
        client.command("CREATE TABLE kept (x UInt8) ENGINE = MergeTree ORDER BY x")
        client.command("INSERT INTO kept VALUES (7)")
        local.stop_service("clickhouse")
        assert not local.clickhouse_ready()
        local.start_service("clickhouse")
        client = connect(settings, database="")
        assert client.command("SELECT sum(x) FROM kept") == 7
    finally:
        local.down()


def test_a_failed_start_leaves_nothing_running(tmp_path) -> None:
    """If ClickHouse cannot start (its port is taken), the broker started with it is stopped."""
    import socket

    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    taken = blocker.getsockname()[1]
    settings = Settings(
        home=tmp_path / "home",
        kafka_bootstrap=f"127.0.0.1:{free_port()}",
        clickhouse_url=f"http://127.0.0.1:{taken}",
    )
    local = LocalStack(settings)
    try:
        try:
            local.up()
        except Exception as exc:
            assert "taken" in str(exc)
        else:
            raise AssertionError("up() should fail while the ClickHouse port is taken")
        assert not any(s.running for s in local.status())
        assert not local.broker_ready()
    finally:
        local.down()
        blocker.close()
