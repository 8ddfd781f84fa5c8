"""API fuzzing with schemathesis against our own OpenAPI schema (``/openapi.json``).

Hypothesis draws parameters for every operation, valid and invalid, and the app answers
from a real ClickHouse database holding two tenants' rows (including names full of quotes).

- With a valid key: no 5xx, every response conforms to its documented schema (status code,
  content type, body), invalid input is rejected with 4xx, and schemathesis's ``ignored_auth``
  check probes each operation once more without a key and with a wrong one.
- Without a valid key (none, a wrong one, another scheme, an empty bearer): every ``/v1``
  operation answers 401 with a JSON message and a ``WWW-Authenticate`` header, whatever
  the other parameters; the operations endpoints (/healthz, /readyz, /metrics) answer
  without a key by design (probes, scrapers) and return no tenant data.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import hypothesis
import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck
from schemathesis import GenerationMode
from schemathesis.checks import negative_data_rejection, positive_data_acceptance

from llm_usage.clickhouse import apply_migrations, connect
from llm_usage.settings import Settings
from query_api.app import create_app
from tests.conftest import unique
from tests.integration.test_api_oracle import generate, insert

pytestmark = pytest.mark.integration

KEY, OTHER_KEY = "fuzz-key-A", "fuzz-key-B"
EXAMPLES = int(os.environ.get("LLM_USAGE_FUZZ_EXAMPLES", "50"))
FUZZ = hypothesis.settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=False,
    suppress_health_check=list(HealthCheck),
    database=None,
)


@pytest.fixture(scope="module")
def fuzz_settings(base_settings: Settings) -> Iterator[Settings]:
    settings = base_settings.model_copy(
        update={
            "clickhouse_database": unique("fuzz"),
            "api_keys": f"{KEY}:tenant-a,{OTHER_KEY}:tenant-b",
        }
    )
    admin = connect(settings, database="")
    apply_migrations(admin, settings)
    client = connect(settings)
    insert(client, generate("tenant-a", 1500, seed=7) + generate("tenant-b", 300, seed=8,
                                                                 secret="SecretB"))  # fmt: skip
    client.close()
    try:
        yield settings
    finally:
        admin.command(f"DROP DATABASE IF EXISTS `{settings.clickhouse_database}` SYNC")
        admin.close()


class OneLifespan:
    """The app with its lifespan run once for the module, as a server runs it.

    schemathesis enters the ASGI lifespan around every single call; the app's shutdown
    closes its query pool, so a second call would hit a closed app (a harness artifact).
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        await self.app(scope, receive, send)


@pytest.fixture(scope="module")
def api_schema(fuzz_settings: Settings) -> Iterator[Any]:
    app = create_app(fuzz_settings)
    with TestClient(app):  # startup now, shutdown (pool, connection) after the module
        yield schemathesis.openapi.from_asgi("/openapi.json", OneLifespan(app))


# Operations come from our own schema (creating the app opens no connection). The pytest
# plugin's lazy ``from_fixture`` does not work with pytest 9 (it reads ``node._nodeid``), so
# each operation's strategy is driven with hypothesis directly: the same cases, the same checks.
OPENAPI = create_app(Settings()).openapi()  # type: ignore[call-arg]
MODES = {"valid": GenerationMode.POSITIVE, "invalid": GenerationMode.NEGATIVE}
# (path, method, mode): invalid input only exists where there is something to get wrong
CASES = [
    (path, method.upper(), mode)
    for path, item in sorted(OPENAPI["paths"].items())
    for method, operation in sorted(item.items())
    for mode in MODES
    if mode == "valid" or operation.get("parameters") or operation.get("requestBody")
]
# Two built-in checks do not fit this API, for reasons of the schema language, not of the app:
# - positive_data_acceptance: the schema cannot express cross-parameter rules (from before
#   to, at most 400 days, period or from/to, to needs from), so a schema-valid request may
#   rightly get 422 with a message;
# - negative_data_rejection: its "invalid" cases include unknown extra query parameters,
#   which HTTP APIs ignore by convention (test_tenant_isolation_and_injection checks that a
#   ``tenant_id`` parameter is ignored), and "no Authorization header" while this test sends
#   one. Wrongly typed or out-of-range parameters are still drawn: any 5xx fails
#   not_a_server_error, and whatever comes back must match the schema documented for its
#   status code (response_schema_conformance, status_code_conformance).
EXCLUDED = [positive_data_acceptance, negative_data_rejection]


def fuzz_operation(
    api_schema: Any,
    path: str,
    method: str,
    mode: str,
    call: Callable[[Any], None],
    *,
    examples: int = EXAMPLES,
) -> None:
    strategy = api_schema[path][method].as_strategy(generation_mode=MODES[mode])

    @hypothesis.settings(FUZZ, max_examples=examples)
    @hypothesis.given(case=strategy)
    def run(case: Any) -> None:
        call(case)

    run()


@pytest.mark.timeout(300)
@pytest.mark.parametrize(("path", "method", "mode"), CASES)
def test_fuzz_with_a_valid_key_no_5xx_and_responses_match_the_schema(
    api_schema: Any, path: str, method: str, mode: str
) -> None:
    def call(case: Any) -> None:
        case.call_and_validate(headers={"Authorization": f"Bearer {KEY}"}, excluded_checks=EXCLUDED)

    fuzz_operation(api_schema, path, method, mode, call)


# Each example is sent with every bad credential below, and the answer cannot depend on the
# other parameters (authentication comes first), so fewer examples say as much.
NO_KEY_EXAMPLES = max(1, EXAMPLES // 4)
BAD_CREDENTIALS: list[dict[str, str]] = [
    {},
    {"Authorization": "Bearer not-a-key"},
    {"Authorization": f"Bearer {KEY}x"},
    {"Authorization": f"Basic {KEY}"},
    {"Authorization": "Bearer "},
    {"Authorization": f"bearer{KEY}"},
]


@pytest.mark.timeout(300)
@pytest.mark.parametrize(("path", "method", "mode"), CASES)
def test_fuzz_without_a_valid_key_no_endpoint_is_reachable(
    api_schema: Any, path: str, method: str, mode: str
) -> None:
    def call(case: Any) -> None:
        for headers in BAD_CREDENTIALS:
            case.headers = {
                k: v for k, v in (case.headers or {}).items() if k.lower() != "authorization"
            }
            response = case.call(headers=headers)
            assert response.status_code < 500, (headers, response.status_code, response.text)
            if path.startswith("/v1/"):
                assert response.status_code == 401, (path, headers, response.status_code)
                assert response.json()["detail"], response.text
                assert response.headers["www-authenticate"] in (["Bearer"], "Bearer")
                case.validate_response(response, headers=headers, excluded_checks=EXCLUDED)
            else:
                assert "tenant-a" not in response.text and "SecretB" not in response.text

    fuzz_operation(api_schema, path, method, mode, call, examples=NO_KEY_EXAMPLES)
