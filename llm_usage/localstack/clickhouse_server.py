"""Run chdb-core's embedded ClickHouse engine as a real HTTP server on loopback.

``python -m llm_usage.localstack.clickhouse_server DATA_DIR [--tcp]`` must be started with
a ``config.xml`` in its working directory (see :func:`write_config`); ``--tcp`` also opens
the native port, which the shards of a cluster use between them. chdb-core's private
``_chdb.query`` keeps the listeners up for as long as one long-running statement runs; the
process ends on SIGTERM with its data kept. Only one process may open ``DATA_DIR``.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Holds the listeners open until the process is signalled (one row per second, forever).
_SERVE_FOREVER = (
    "SELECT sleepEachRow(1) FROM numbers(1000000000000) "
    "SETTINGS max_block_size=1, max_execution_time=0 FORMAT Null"
)


def write_config(
    workdir: Path,
    *,
    host: str,
    http_port: int,
    tcp_port: int | None = None,
    cluster: tuple[str, list[int]] | None = None,
) -> Path:
    """Write the ``config.xml`` the server reads from its working directory.

    ``cluster`` is (name, native ports of every shard on ``host``): a ``remote_servers``
    entry with one shard per server, which ``Distributed`` tables name.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    lines = [f"  <http_port>{http_port}</http_port>", f"  <listen_host>{host}</listen_host>"]
    if tcp_port is not None:
        lines.append(f"  <tcp_port>{tcp_port}</tcp_port>")
    if cluster is not None:
        name, ports = cluster
        shards = "".join(
            "<shard><internal_replication>true</internal_replication>"
            f"<replica><host>{host}</host><port>{port}</port></replica></shard>"
            for port in ports
        )
        lines.append(f"  <remote_servers><{name}>{shards}</{name}></remote_servers>")
    config = workdir / "config.xml"
    config.write_text("<clickhouse>\n" + "\n".join(lines) + "\n</clickhouse>\n")
    return config


def serve(data_dir: str, *, tcp: bool = False) -> None:
    import chdb._chdb as chdb_core  # private module: pinned chdb-core==26.9.0, see DESIGN.md

    listen = (
        "SYSTEM START LISTEN TCP; SYSTEM START LISTEN HTTP; "
        if tcp
        else "SYSTEM START LISTEN HTTP; "
    )
    # The format must be TabSeparated: with CSV, clickhouse-connect's handshake breaks.
    chdb_core.query(listen + _SERVE_FOREVER, "TabSeparated", path=data_dir)  # type: ignore[attr-defined]


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3) or sys.argv[2:] not in ([], ["--tcp"]):
        sys.exit("usage: python -m llm_usage.localstack.clickhouse_server DATA_DIR [--tcp]")
    serve(sys.argv[1], tcp=sys.argv[2:] == ["--tcp"])
