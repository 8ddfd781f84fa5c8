"""Fuzzing the ingest API with schemathesis against its own OpenAPI schema.

Hypothesis draws bodies for ``POST /v1/events`` (JSON arrays of arbitrary objects) and
``POST /v1/traces`` (JSON objects and binary bodies), valid and invalid, against the app
wired to the session's real broker. No 5xx, every answer matches its documented schema, and
without a valid key every operation is a 401.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from fastapi.testclient import TestClient

from llm_usage.settings import Settings
from query_api.ingest.app import create_ingest_app
from tests.conftest import unique
from tests.reliability.test_api_fuzz import (
    BAD_CREDENTIALS,
    EXCLUDED,
    NO_KEY_EXAMPLES,
    OneLifespan,
    fuzz_operation,
)

pytestmark = pytest.mark.integration

KEY = "fuzz-ingest-key"
OPENAPI = create_ingest_app(Settings()).openapi()  # type: ignore[call-arg]
CASES = [
    (path, method.upper(), mode)
    for path, item in sorted(OPENAPI["paths"].items())
    for method, operation in item.items()
    if operation.get("security")
    for mode in ("valid", "invalid")
]


@pytest.fixture(scope="module")
def ingest_schema(base_settings: Settings) -> Iterator[Any]:
    settings = base_settings.model_copy(
        update={
            "api_keys": f"{KEY}:tenant-a",
            "topic_calls": unique("fuzz_calls"),
            "topic_dead_letter": unique("fuzz_dlq"),
        }
    )
    app = create_ingest_app(settings)
    with TestClient(app):
        yield schemathesis.openapi.from_asgi("/openapi.json", OneLifespan(app))


@pytest.mark.timeout(300)
@pytest.mark.parametrize(("path", "method", "mode"), CASES)
def test_fuzz_ingest_with_a_valid_key_no_5xx_and_responses_match_the_schema(
    ingest_schema: Any, path: str, method: str, mode: str
) -> None:
    def call(case: Any) -> None:
        case.call_and_validate(headers={"Authorization": f"Bearer {KEY}"}, excluded_checks=EXCLUDED)

    fuzz_operation(ingest_schema, path, method, mode, call)


@pytest.mark.timeout(300)
@pytest.mark.parametrize(("path", "method", "mode"), CASES[::2])
def test_fuzz_ingest_without_a_valid_key_every_operation_is_401(
    ingest_schema: Any, path: str, method: str, mode: str
) -> None:
    def call(case: Any) -> None:
        for headers in BAD_CREDENTIALS:
            case.headers = {
                k: v for k, v in (case.headers or {}).items() if k.lower() != "authorization"
            }
            response = case.call(headers=headers)
            assert response.status_code == 401, (headers, response.status_code, response.text)

    fuzz_operation(ingest_schema, path, method, mode, call, examples=NO_KEY_EXAMPLES)
