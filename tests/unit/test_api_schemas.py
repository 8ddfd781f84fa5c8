"""Money formatting, cursors and the API's key helpers (pure, no ClickHouse)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from llm_usage.settings import Settings
from query_api.keys import Authenticator, Scope, parse_scopes, split_key
from query_api.pagination import CursorError, decode_cursor, encode_cursor, total_pages
from query_api.schemas import average, iso, money


def test_money_is_exact_at_twelve_places() -> None:
    assert money(Decimal("12.345678901")) == "12.345678901000"
    assert money(Decimal("0")) == "0.000000000000"
    big = Decimal("12345678901234567890123456.123456789012")
    assert money(big) == "12345678901234567890123456.123456789012"


def test_average_rounds_half_even_and_handles_no_calls() -> None:
    assert average(Decimal("1"), 3) == "0.333333333333"
    assert average(Decimal("2"), 3) == "0.666666666667"
    assert average(Decimal("0.000000000001"), 2) == "0.000000000000"  # half-even: 0.5e-12 -> 0
    assert average(Decimal("0.000000000003"), 2) == "0.000000000002"
    assert average(Decimal("5"), 0) == "0.000000000000"


def test_iso_keeps_offsets_and_milliseconds() -> None:
    assert iso(datetime(2026, 3, 1, 5, 0, tzinfo=UTC)) == "2026-03-01T05:00:00+00:00"
    assert iso(datetime(2026, 3, 1, 5, 0, 0, 123000, tzinfo=UTC)) == "2026-03-01T05:00:00.123+00:00"


def test_cursor_round_trip_and_rejects_garbage() -> None:
    event_id = str(uuid.uuid4())
    assert decode_cursor(encode_cursor(1_772_000_000_123, event_id)) == (
        1_772_000_000_123,
        event_id,
    )
    for bad in ("", "not-a-cursor", "MTIzOm5vdC1hLXV1aWQ", "%%%"):
        with pytest.raises(CursorError):
            decode_cursor(bad)
    assert total_pages(0, 20) == 0 and total_pages(41, 20) == 3


def test_env_keys_decide_the_tenant_and_have_every_scope() -> None:
    auth = Authenticator(Settings(api_keys="k1:acme, k2:globex"), store=None)
    one, two = auth.principal("k1"), auth.principal("k2")
    assert one is not None and one.tenant_id == "acme" and one.scopes == frozenset(Scope)
    assert two is not None and two.tenant_id == "globex"
    assert auth.principal("k3") is None
    assert auth.principal("k1:acme") is None


def test_stored_key_format_and_scopes() -> None:
    assert split_key("llmu_0123456789abcdef_" + "a" * 32) == ("0123456789abcdef", "a" * 32)
    assert split_key("llmu_0123456789abcdef_" + "a" * 31) is None
    assert split_key("k1") is None
    assert parse_scopes(["read,ingest"]) == {Scope.READ, Scope.INGEST}
    assert parse_scopes(["admin", "read"]) == {Scope.ADMIN, Scope.READ}
    with pytest.raises(ValueError, match="unknown scope write"):
        parse_scopes(["read", "write"])
    with pytest.raises(ValueError, match="at least one scope"):
        parse_scopes([])
