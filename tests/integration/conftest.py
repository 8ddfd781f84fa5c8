"""Fixtures of the ingest tests: a real ``llm-usage ingest`` process, and stored API keys."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from llm_usage.clickhouse import connect
from llm_usage.localstack.processes import free_port
from llm_usage.runner import IngestProcess
from llm_usage.settings import Settings
from query_api.keys import ClientRows, KeyStore, Scope


@pytest.fixture
def ingest_factory(tmp_path: Path) -> Iterator[Callable[..., IngestProcess]]:
    """Start ``llm-usage ingest`` children on free ports; each is stopped by its PID."""
    started: list[IngestProcess] = []

    def start(settings: Settings, *, wait: bool = True, **overrides: object) -> IngestProcess:
        values = {"ingest_port": free_port(), "api_key_cache_s": 0.0, **overrides}
        process = IngestProcess(
            settings.model_copy(update=values), tmp_path / f"ingest-{len(started)}.log"
        ).start()
        started.append(process)
        if wait:
            process.wait_ready()
        return process

    yield start
    for process in started:
        process.stop()


@pytest.fixture
def key_store(migrated: Settings) -> Iterator[KeyStore]:
    client = connect(migrated)
    yield KeyStore(ClientRows(client))
    client.close()


@pytest.fixture
def new_key(key_store: KeyStore) -> Callable[..., str]:
    """``new_key("tenant-a", Scope.READ, ...)``: a stored key, returned in plain text."""

    def create(tenant: str, *scopes: Scope) -> str:
        return key_store.create(tenant, frozenset(scopes), name="test")[1]

    return create
