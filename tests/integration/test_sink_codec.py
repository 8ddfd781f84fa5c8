"""The worker inserts and queries with clickhouse-connect's compiled (Rust) Native codec: it
must store and read every column exactly as the default Python codec does."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, timedelta

from llm_usage.clickhouse import connect
from llm_usage.settings import Settings
from producers.contract import MAX_TOKENS, ServiceTier, Source, Speed, Status, UsageEvent
from stream_processor.enrich import COLUMNS, Enricher
from stream_processor.names import Names
from stream_processor.pricing import PriceBook
from stream_processor.sink import ClickHouseWriter

TEXTS = ["plain", "", "quote \" and \\ backslash", "tab\tnew\nline", "日本語のタイトル",
         "emoji 🚀 outside the BMP", "x" * 512, "  ", "NULL", "\x00nul"]  # fmt: skip
MODELS = ["claude-sonnet-4-5-20250929", "claude-opus-4-5", "claude-haiku-4-5", "unknown-model"]


def varied_events(count: int, seed: int) -> list[UsageEvent]:
    """Events that reach every kind of value a column holds: unicode and control text,
    empty and absent names, extreme token counts, microseconds, every enum, metadata."""
    rng = random.Random(seed)
    now = datetime.now(UTC).replace(microsecond=0)
    tokens = [0, 1, 7, 999_999, MAX_TOKENS]
    events = []
    for i in range(count):
        five = rng.choice(tokens)
        hour = rng.choice([t for t in tokens if t <= MAX_TOKENS - five])
        output = rng.choice(tokens)
        events.append(
            UsageEvent(
                schema_version=2,
                event_id=uuid.UUID(int=rng.getrandbits(128)),
                tenant_id=rng.choice(["acme", "tenant-ü", "t" * 128]),
                occurred_at=now - timedelta(seconds=rng.randrange(86_400 * 40),
                                            microseconds=rng.randrange(1_000_000)),
                source=rng.choice(list(Source)),
                source_id=rng.choice(TEXTS[:6]) or "id",
                source_name=rng.choice([None, *TEXTS[:7]]),
                model=rng.choice(MODELS),
                input_tokens=rng.choice(tokens),
                output_tokens=output,
                cache_creation_input_tokens=five + hour,
                cache_creation_5m_input_tokens=five,
                cache_creation_1h_input_tokens=hour,
                cache_read_input_tokens=rng.choice(tokens),
                service_tier=rng.choice([None, *ServiceTier]),
                speed=rng.choice([None, *Speed]),
                inference_geo=rng.choice([None, "us", "global"]),
                web_search_requests=rng.choice([None, 0, 3, 100_000]),
                web_fetch_requests=rng.choice([None, 0, 5]),
                thinking_tokens=rng.choice([None, 0, output]),
                duration_ms=rng.choice([0, 1, 86_400_000]),
                status=rng.choice(list(Status)),
                request_id=rng.choice([None, "", "req_011CU"]),
                metadata=rng.choice([{}, {"k": TEXTS[i % len(TEXTS)], "n": i, "f": 0.1,
                                          "b": True, "z": None}]),
            )
        )  # fmt: skip
    return events


def test_the_rust_codec_stores_and_reads_every_column_as_the_python_codec_does(
    migrated: Settings,
) -> None:
    rows = Enricher(PriceBook.load(), Names(lookback_s=0)).rows(
        varied_events(400, seed=24), "calls", 3, 12_345
    )
    admin = connect(migrated)
    tables = {"rust": "codec_rust", "python": "codec_python"}
    for table in tables.values():
        admin.command(f"CREATE TABLE {table} AS usage_events ENGINE = MergeTree ORDER BY tuple()")
    # strict: an insert the compiled codec cannot take raises instead of using Python's
    rust = ClickHouseWriter(migrated, lambda s: connect(s, native_codec="rust_strict"))
    python = ClickHouseWriter(migrated, lambda s: connect(s, native_codec="python"))
    rust.client.insert(tables["rust"], rows, column_names=list(COLUMNS))
    python.client.insert(tables["python"], rows, column_names=list(COLUMNS))

    def stored(table: str) -> bytes:
        # every column but the insert's own time (a default: now64())
        sql = f"SELECT * EXCEPT ingested_at FROM {table} ORDER BY event_id FORMAT TabSeparated"
        return bytes(admin.raw_query(sql))

    assert stored(tables["rust"]) == stored(tables["python"])
    # the worker's queries (batch ledger, stored ids, names) decode with it as well
    query = f"SELECT * EXCEPT ingested_at FROM {tables['python']} ORDER BY event_id"
    decoded = rust.client.query(query).result_rows
    assert decoded == python.client.query(query).result_rows
    assert sorted(row[0] for row in decoded) == sorted(row[0] for row in rows)
    assert admin.command(f"SELECT count() FROM {tables['rust']}") == len(rows)
