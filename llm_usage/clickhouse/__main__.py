"""``python -m llm_usage.clickhouse [--cluster NAME]``: print the migrations' SQL for a layout.

Lets an operator read exactly what ``llm-usage migrate`` will run on one node or on a
cluster before running it.
"""

from __future__ import annotations

import argparse

from llm_usage.clickhouse.migrations import Layout, bookkeeping_statements, discover
from llm_usage.settings import Settings


def main(argv: list[str] | None = None) -> None:
    """Print every migration rendered for one node or for ``--cluster NAME``."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--cluster", default=None, help="render cluster mode for this cluster")
    args = parser.parse_args(argv)
    overrides = {} if args.cluster is None else {"clickhouse_cluster": args.cluster}
    settings = Settings(**overrides)
    layout = Layout.of(settings)
    print(f"-- layout: {'cluster ' + layout.cluster if layout.clustered else 'single node'}")
    for statement in bookkeeping_statements(settings, layout):
        print(f"{statement};\n")
    for migration in discover():
        print(f"-- {migration.path.name}")
        for statement in migration.statements(settings, layout):
            print(f"{statement};\n")


if __name__ == "__main__":
    main()
