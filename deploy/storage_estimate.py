"""Disk per call event, per table, measured on the real engine (for sizing a cluster).

Builds the schema (the same migration files, single-node layout) in a throw-away embedded
ClickHouse (chdb-core), generates N events server-side with the given spread, merges the
parts and prints compressed bytes per event for the raw table and every rollup. Multiply
by replicas for a cluster. Runs from a checkout (the image does not ship chdb):

    .venv/bin/python deploy/storage_estimate.py --events 2000000 --conversations 200000

Rollups shrink with repetition: the more calls share a (tenant, hour, source_id, model)
key, the fewer rollup rows per event. ``--conversations`` close to ``--events`` is the
worst case (every call its own rollup row).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time

from llm_usage.clickhouse.migrations import bookkeeping_statements, discover
from llm_usage.settings import Settings

# A conversation (or agent) belongs to one tenant and one source and mostly uses one model,
# as in real traffic; token counts and durations vary per call.
INSERT = """
INSERT INTO est.usage_events (event_id, tenant_id, occurred_at, source, source_id,
  source_name, model, input_tokens, output_tokens, cache_creation_input_tokens,
  cache_read_input_tokens, cost_usd, priced, price_version, duration_ms, status, request_id,
  metadata, schema_version, kafka_topic, kafka_partition, kafka_offset)
SELECT generateUUIDv7(), concat('tenant-', toString(conv % {tenants})),
  now64(3) - toIntervalMillisecond(number * {spacing_ms}),
  ['chat', 'agent', 'memory'][1 + conv % 3], concat('conv-', toString(conv)),
  concat('Conversation about topic ', toString(conv)),
  ['claude-sonnet-4-5', 'claude-haiku-4-5', 'claude-opus-4-1'][1 + (conv + (number % 10 = 0)) % 3],
  1000 + cityHash64(number, 1) % 20000, 100 + cityHash64(number, 2) % 2000,
  cityHash64(number, 3) % 5000, cityHash64(number, 4) % 50000,
  toDecimal128((1000 + cityHash64(number, 1) % 20000) * 0.000003
               + (100 + cityHash64(number, 2) % 2000) * 0.000015, 12),
  1, '2025-09-29', 300 + cityHash64(number, 5) % 30000, 'ok',
  concat('req_', hex(cityHash64(number, 6))), '{{}}', 1, 'llm-usage.calls', number % 12, number
FROM (SELECT number, cityHash64(number) % {conversations} AS conv FROM numbers({events}))
"""

SIZES = """
SELECT table, sum(rows), sum(data_compressed_bytes), sum(data_uncompressed_bytes)
FROM system.parts WHERE database = 'est' AND active GROUP BY table ORDER BY table
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=2_000_000)
    parser.add_argument("--conversations", type=int, default=200_000)
    parser.add_argument("--tenants", type=int, default=50)
    parser.add_argument("--spacing-ms", type=int, default=1300, help="time between events")
    args = parser.parse_args()

    from chdb import session

    workdir = tempfile.mkdtemp(prefix="llm-usage-size-")
    try:
        db = session.Session(workdir)
        settings = Settings(clickhouse_database="est")
        for statement in bookkeeping_statements(settings)[:1]:
            db.query(statement)
        for migration in discover():
            for statement in migration.statements(settings):
                db.query(statement)
        started = time.monotonic()
        db.query(INSERT.format(**vars(args)))
        elapsed = time.monotonic() - started
        for table in ("usage_events", "usage_hourly", "usage_daily", "source_names"):
            db.query(f"OPTIMIZE TABLE est.{table} FINAL")
        rows = [line.split("\t") for line in str(db.query(SIZES, "TSV")).strip().splitlines()]
        print(f"{args.events:,} events ({args.conversations:,} conversations, "
              f"{args.tenants} tenants), inserted with every view in {elapsed:.1f}s")  # fmt: skip
        print(f"{'table':<18}{'rows':>12}{'bytes/event':>14}{'compression':>13}")
        total = 0.0
        for table, count, compressed, raw in rows:
            per_event = int(compressed) / args.events
            total += per_event
            ratio = int(raw) / max(int(compressed), 1)
            print(f"{table:<18}{int(count):>12,}{per_event:>14.1f}{ratio:>12.1f}x")
        print(f"{'total':<18}{'':>12}{total:>14.1f}   (x replicas on a cluster)")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
