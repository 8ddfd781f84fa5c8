"""Scopes and tenant isolation, for every endpoint of the query API and the ingest API.

The endpoints come from each app's OpenAPI schema, so a new endpoint is covered the day it
is added. Keys are real stored keys (hashed in ClickHouse), the apps run in-process against
the session's real broker and ClickHouse.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from llm_usage.settings import Settings
from query_api.app import create_app
from query_api.ingest.app import create_ingest_app
from query_api.keys import Scope
from stream_processor.harness import WorkerProcess
from tests.conftest import wait_for
from tests.integration.test_processor_e2e import counted, make_events, worker_settings

pytestmark = pytest.mark.integration


def secured_operations(app: FastAPI) -> list[tuple[str, str]]:
    """(method, path) of every operation that the schema says needs a key."""
    return [
        (method.upper(), path)
        for path, operations in app.openapi()["paths"].items()
        for method, operation in operations.items()
        if operation.get("security")
    ]


@pytest.fixture
def clients(migrated: Settings) -> Iterator[dict[Scope, TestClient]]:
    """The app each scope is for: read -> query API, ingest -> ingest API."""
    settings = migrated.model_copy(update={"api_key_cache_s": 0.0})
    with TestClient(create_app(settings)) as query, TestClient(create_ingest_app(settings)) as ing:
        yield {Scope.READ: query, Scope.INGEST: ing}


# The scope each family of endpoints needs, per method ("*": any other); a new secured
# endpoint must be classified here.
NEEDED: dict[str, dict[str, Scope]] = {
    "/v1/usage/": {"*": Scope.READ},
    "/v1/keys": {"*": Scope.ADMIN},
    "/v1/budgets": {"GET": Scope.READ, "*": Scope.ADMIN},  # the page shows them
    "/v1/alerts": {"*": Scope.READ},
    "/v1/webhooks": {"*": Scope.ADMIN},
    "/v1/events": {"*": Scope.INGEST},
    "/v1/traces": {"*": Scope.INGEST},
}


def needed_scope(method: str, path: str) -> Scope:
    found = [rule for prefix, rule in NEEDED.items() if path.startswith(prefix)]
    assert len(found) == 1, f"{path}: which scope does it need? add it to NEEDED"
    return found[0].get(method, found[0]["*"])


def test_scopes_every_endpoint_refuses_no_key_bad_key_and_keys_without_its_scope(
    clients: dict[Scope, TestClient], new_key: Callable[..., str]
) -> None:
    keys = {scope: new_key("t1", scope) for scope in Scope}
    everything = new_key("t1", *Scope)
    bad = {"Authorization": "Bearer llmu_0123456789abcdef_" + "x" * 32}
    checked: dict[Scope, int] = dict.fromkeys(Scope, 0)
    for client in clients.values():
        for method, path in secured_operations(client.app):  # type: ignore[arg-type]
            needed = needed_scope(method, path)
            url = re.sub(r"\{\w+\}", "0123456789abcdef", path)  # an id nobody has
            assert client.request(method, url).status_code == 401, (method, path)
            assert client.request(method, url, headers=bad).status_code == 401, (method, path)
            for scope, key in keys.items():
                answer = client.request(method, url, headers=_auth(key))
                if scope == needed:
                    assert answer.status_code not in (401, 403), (method, path, answer.text)
                else:
                    assert answer.status_code == 403, (method, path, scope, answer.text)
                    assert needed.value in answer.json()["detail"]
            answer = client.request(method, url, headers=_auth(everything))
            assert answer.status_code not in (401, 403), (method, path)
            checked[needed] += 1
    assert all(checked.values()), checked
    print(f"scopes checked, operations per scope: {checked}")


def test_tenant_isolation_admin_key_manages_only_its_own_tenants_keys(
    clients: dict[Scope, TestClient], new_key: Callable[..., str]
) -> None:
    query = clients[Scope.READ]
    admin_a, admin_b = new_key("t1", Scope.ADMIN), new_key("t2", Scope.ADMIN)
    created = query.post(
        "/v1/keys", json={"scopes": ["read"], "name": "dashboard"}, headers=_auth(admin_a)
    )
    assert created.status_code == 201, created.text
    key_a, key_id = created.json()["key"], created.json()["key_id"]
    assert query.get("/v1/usage/summary", headers=_auth(key_a)).status_code == 200
    listed_b = query.get("/v1/keys", headers=_auth(admin_b)).json()["items"]
    assert key_id not in {k["key_id"] for k in listed_b}
    assert query.delete(f"/v1/keys/{key_id}", headers=_auth(admin_b)).status_code == 404
    assert query.get("/v1/usage/summary", headers=_auth(key_a)).status_code == 200
    assert query.delete(f"/v1/keys/{key_id}", headers=_auth(admin_a)).status_code == 200
    assert query.get("/v1/usage/summary", headers=_auth(key_a)).status_code == 401
    listed_a = {
        k["key_id"]: k for k in query.get("/v1/keys", headers=_auth(admin_a)).json()["items"]
    }
    assert listed_a[key_id]["revoked_at"] is not None and "key" not in listed_a[key_id]


def test_tenant_isolation_ingest_key_writes_only_its_tenant_read_key_sees_only_its_own(
    migrated: Settings,
    clients: dict[Scope, TestClient],
    new_key: Callable[..., str],
    worker_factory: Callable[[Settings], WorkerProcess],
) -> None:
    settings = worker_settings(migrated)
    start = datetime.now(UTC) - timedelta(hours=20)
    events = make_events(40, start, step=timedelta(minutes=20))  # tenants t1 and t2
    ingest = clients[Scope.INGEST]
    posted: dict[str, int] = {}
    for tenant in ("t1", "t2"):
        key = new_key(tenant, Scope.INGEST)
        mine = [json.loads(e.to_json()) for e in events if e.tenant_id == tenant]
        theirs = [json.loads(e.to_json()) for e in events if e.tenant_id != tenant][:3]
        answer = ingest.post("/v1/events", json=mine + theirs, headers=_auth(key))
        assert answer.status_code == 202, answer.text
        body = answer.json()
        assert body["accepted"] == len(mine)
        assert [r["index"] for r in body["rejected"]] == list(range(len(mine), len(mine) + 3))
        posted[tenant] = len(mine)
    for number, tenant in enumerate(("t1", "t2")):  # OTLP: one span of its own, one claiming
        other = "t2" if tenant == "t1" else "t1"  # the other tenant (rejected, with a reason)
        spans = [_genai_span(start, number, 1, None), _genai_span(start, number, 2, other)]
        answer = ingest.post(
            "/v1/traces", json=_otlp(spans), headers=_auth(new_key(tenant, Scope.INGEST))
        )
        assert answer.status_code == 200, answer.text
        partial = answer.json()["partialSuccess"]
        assert int(partial["rejectedSpans"]) == 1, partial  # int64: a string in OTLP/JSON
        assert (
            f"'{other}' does not match the API key's tenant '{tenant}'" in partial["errorMessage"]
        )
        posted[tenant] += 1
    worker = worker_factory(settings)
    wait_for(
        lambda: counted(settings, len(events) + 2),
        90,
        "both tenants' events",
        detail=worker.tail,
    )
    query = clients[Scope.READ]
    window = {"from": (start - timedelta(hours=1)).isoformat(), "to": datetime.now(UTC).isoformat()}
    for tenant, count in posted.items():
        summary = query.get(
            "/v1/usage/summary", params=window, headers=_auth(new_key(tenant, Scope.READ))
        )
        assert summary.status_code == 200, summary.text
        assert summary.json()["calls"] == count
        records = query.get(
            "/v1/usage/records",
            params={**window, "page_size": 100},
            headers=_auth(new_key(tenant, Scope.READ)),
        )
        assert records.status_code == 200
        assert records.json()["total"] == count == len(records.json()["items"])


def _genai_span(
    start: datetime, trace: int, span: int, claimed_tenant: str | None
) -> dict[str, Any]:
    """An OTLP/JSON GenAI chat span; ``claimed_tenant`` sets ``llm_usage.tenant_id``."""
    began = int((start + timedelta(minutes=span)).timestamp() * 1e9)
    attributes = {
        "gen_ai.operation.name": {"stringValue": "chat"},
        "gen_ai.provider.name": {"stringValue": "anthropic"},
        "gen_ai.response.model": {"stringValue": "claude-sonnet-4-6"},
        "gen_ai.conversation.id": {"stringValue": "conv-otlp"},
        "gen_ai.usage.input_tokens": {"intValue": "100"},
        "gen_ai.usage.output_tokens": {"intValue": "10"},
    }
    if claimed_tenant is not None:
        attributes["llm_usage.tenant_id"] = {"stringValue": claimed_tenant}
    return {
        "traceId": f"{trace + 1:032x}",
        "spanId": f"{span:016x}",
        "name": "chat claude-sonnet-4-6",
        "startTimeUnixNano": str(began),
        "endTimeUnixNano": str(began + 900_000_000),
        "attributes": [{"key": k, "value": v} for k, v in attributes.items()],
    }


def _otlp(spans: list[dict[str, Any]]) -> dict[str, Any]:
    return {"resourceSpans": [{"scopeSpans": [{"spans": spans}]}]}


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}
