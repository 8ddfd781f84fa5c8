"""The API over real HTTP (uvicorn on loopback): concurrent requests share one ClickHouse
client safely and every answer is the same."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import uvicorn

from llm_usage.clickhouse import connect
from llm_usage.localstack.processes import free_port
from llm_usage.settings import Settings
from query_api.app import create_app
from tests.integration.test_api_oracle import END, START, generate, insert, iso_ms, ms

pytestmark = pytest.mark.integration


@pytest.fixture
def server(migrated: Settings) -> Iterator[str]:
    settings = migrated.model_copy(update={"api_keys": "k:acme"})
    insert(connect(settings), generate("acme", 2000, seed=5))
    port = free_port()
    config = uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning")
    uv = uvicorn.Server(config)
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not uv.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert uv.started, "uvicorn did not start"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        uv.should_exit = True
        thread.join(timeout=10)


def test_concurrent_requests_over_http(server: str) -> None:
    window = {"from": iso_ms(ms(START)), "to": iso_ms(ms(END))}
    paths = [
        ("/v1/usage/summary", {}),
        ("/v1/usage/timeseries", {"tz": "Asia/Kathmandu", "granularity": "day"}),
        ("/v1/usage/by-source", {}),
        ("/v1/usage/by-model", {"search": "digest"}),
        ("/v1/usage/top", {"by": "tokens"}),
        ("/v1/usage/records", {"page": 3, "search": "alpha"}),
    ]
    with httpx.Client(base_url=server, headers={"Authorization": "Bearer k"}) as http:

        def call(i: int) -> tuple[int, int, str]:
            path, params = paths[i % len(paths)]
            response = http.get(path, params={**window, **params}, timeout=60)
            return i % len(paths), response.status_code, response.text

        with ThreadPoolExecutor(max_workers=12) as pool:
            results = list(pool.map(call, range(60)))
    assert {status for _, status, _ in results} == {200}
    for index in range(len(paths)):
        bodies = {text for i, _, text in results if i == index}
        assert len(bodies) == 1, f"{paths[index][0]} answered differently under concurrency"
