"""Pure parts of the foundation: settings parsing and migration file handling."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from llm_usage.clickhouse.migrations import discover, split_statements
from llm_usage.settings import Settings


def test_defaults_and_env_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLM_USAGE_CLICKHOUSE_URL", "https://ch.example:9440/")
    monkeypatch.setenv("LLM_USAGE_API_KEYS", "k1:tenant-a, k2:tenant-b")
    s = Settings()
    assert s.kafka_bootstrap == "127.0.0.1:9092"
    assert s.clickhouse_database == "llm_usage"
    assert (s.clickhouse_host, s.clickhouse_port, s.clickhouse_secure) == ("ch.example", 9440, True)
    assert s.api_key_tenants == {"k1": "tenant-a", "k2": "tenant-b"}
    assert s.home == Path(".llm-usage")


@pytest.mark.parametrize(
    "field,value",
    [("clickhouse_url", "127.0.0.1:8123"), ("api_keys", "no-colon"),
     ("clickhouse_database", "drop table;"), ("topic_partitions", 0)],
)  # fmt: skip
def test_bad_settings_name_the_field(field: str, value: object) -> None:
    with pytest.raises(ValidationError) as info:
        Settings(**{field: value})  # type: ignore[arg-type]
    assert field in str(info.value)


def test_split_statements_respects_quotes_and_comments() -> None:
    sql = "-- a; comment\nCREATE TABLE a (x String COMMENT 'semi; colon');\n\nSELECT 1;\n-- end"
    assert split_statements(sql) == [
        "CREATE TABLE a (x String COMMENT 'semi; colon')",
        "SELECT 1",
    ]


def test_migration_files_are_numbered_in_order() -> None:
    migrations = discover()
    assert [m.version for m in migrations] == sorted(m.version for m in migrations)
    assert migrations[0].version == 1
    for m in migrations:
        assert "${database}" in m.path.read_text(), f"{m.path.name} must use ${{database}}"
