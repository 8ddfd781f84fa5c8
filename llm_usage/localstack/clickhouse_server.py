"""Run chdb-core's embedded ClickHouse engine as a real HTTP server on loopback.

``python -m llm_usage.localstack.clickhouse_server DATA_DIR`` must be started with a
``config.xml`` in its working directory (see :func:`write_config`). chdb-core's private
``_chdb.query`` keeps the listeners up for as long as one long-running statement runs; the
process ends on SIGTERM with its data kept. Only one process may open ``DATA_DIR``.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Holds the HTTP listener open until the process is signalled (one row per second, forever).
_SERVE_FOREVER = (
    "SYSTEM START LISTEN HTTP; "
    "SELECT sleepEachRow(1) FROM numbers(1000000000000) "
    "SETTINGS max_block_size=1, max_execution_time=0 FORMAT Null"
)


def write_config(workdir: Path, *, host: str, http_port: int) -> Path:
    """Write the ``config.xml`` the server reads from its working directory."""
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "config.xml"
    config.write_text(
        "<clickhouse>\n"
        f"  <http_port>{http_port}</http_port>\n"
        f"  <listen_host>{host}</listen_host>\n"
        "</clickhouse>\n"
    )
    return config


def serve(data_dir: str) -> None:
    import chdb._chdb as chdb_core  # private module: pinned chdb-core==26.9.0, see DESIGN.md

    # The format must be TabSeparated: with CSV, clickhouse-connect's handshake breaks.
    chdb_core.query(_SERVE_FOREVER, "TabSeparated", path=data_dir)  # type: ignore[attr-defined]


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m llm_usage.localstack.clickhouse_server DATA_DIR")
    serve(sys.argv[1])
