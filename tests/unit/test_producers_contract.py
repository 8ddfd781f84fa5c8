"""The event contract rejects bad events with a reason naming the field."""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from producers.contract import (
    ATTRIBUTE_KEY,
    ATTRIBUTE_KEY_RULE,
    MAX_METADATA_BYTES,
    ContractError,
    EntityRenamed,
    Source,
    Status,
    UsageEvent,
    decode_calls,
    describe_validation_error,
    encode_calls,
    json_length_bound,
    parse_call,
    uuid7,
)


def raw(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "tenant_id": "acme",
        "occurred_at": datetime.now(UTC).isoformat(),
        "source": "chat",
        "source_id": "conv-1",
        "model": "claude-sonnet-4-5",
        "input_tokens": 100,
        "output_tokens": 20,
    }
    base.update(overrides)
    return base


def reason(**overrides: Any) -> str:
    with pytest.raises(ContractError) as info:
        parse_call(raw(**overrides))
    return info.value.reason


def test_a_valid_event_round_trips_through_the_wire_format() -> None:
    events = [parse_call(raw(source_id=f"c{i}")) for i in range(3)]
    decoded = [parse_call(r) for r in decode_calls(encode_calls(events))]
    assert decoded == events
    assert decoded[0].schema_version == 2 and decoded[0].status is Status.OK
    assert decode_calls(events[0].to_json()) == [json.loads(events[0].to_json())]


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"input_tokens": -1}, "input_tokens"),
        ({"output_tokens": -5}, "output_tokens"),
        ({"cache_read_input_tokens": -1}, "cache_read_input_tokens"),
        ({"duration_ms": -1}, "duration_ms"),
        ({"input_tokens": 10_000_001}, "input_tokens"),
        ({"input_tokens": "12"}, "input_tokens"),  # strict: no silent coercion
        ({"input_tokens": 1.5}, "input_tokens"),
        ({"source": "email"}, "source"),
        ({"status": "maybe"}, "status"),
        ({"tenant_id": ""}, "tenant_id"),
        ({"tenant_id": "t" * 129}, "tenant_id"),
        ({"source_id": "s" * 257}, "source_id"),
        ({"source_name": "n" * 513}, "source_name"),
        ({"model": "m" * 129}, "model"),
        ({"request_id": "r" * 257}, "request_id"),
        ({"metadata": {"blob": "x" * MAX_METADATA_BYTES}}, "metadata"),
        ({"metadata": {"nested": {"a": 1}}}, "metadata"),
        ({"occurred_at": "2001-01-01T00:00:00Z"}, "occurred_at"),
        ({"occurred_at": "2999-01-01T00:00:00Z"}, "occurred_at"),
        ({"occurred_at": "2025-01-01T00:00:00"}, "occurred_at"),  # naive: no time zone
        ({"event_id": "not-a-uuid"}, "event_id"),
        ({"unexpected": 1}, "unexpected"),
    ],
)
def test_invalid_values_are_rejected_naming_the_field(
    overrides: dict[str, Any], field: str
) -> None:
    text = reason(**overrides)
    assert text.split(":")[0].split(".")[0] == field, text


def test_nested_metadata_gets_one_clear_reason() -> None:
    assert reason(metadata={"nested": {"a": 1}}) == (
        "metadata: Value error, value of 'nested' must be a string, number, boolean or null, "
        "not dict"
    )


def test_missing_required_fields_are_all_named() -> None:
    with pytest.raises(ContractError) as info:
        parse_call({"occurred_at": datetime.now(UTC).isoformat()})
    for field in ("tenant_id", "source", "source_id", "model"):
        assert f"{field}:" in info.value.reason


def test_timestamps_are_normalised_to_utc_and_small_skew_is_allowed() -> None:
    local = datetime.now(UTC).astimezone(__import__("zoneinfo").ZoneInfo("Asia/Kolkata"))
    event = parse_call(raw(occurred_at=local.isoformat()))
    assert event.occurred_at.utcoffset() == timedelta(0)
    soon = datetime.now(UTC) + timedelta(minutes=30)
    assert parse_call(raw(occurred_at=soon.isoformat())).occurred_at == soon


def test_unsupported_schema_version_and_bad_messages() -> None:
    assert reason(schema_version=3).startswith("schema_version:")
    with pytest.raises(ContractError, match="not valid JSON"):
        decode_calls(b"{nope")
    with pytest.raises(ContractError, match="expected a JSON object or array"):
        decode_calls(b"42")
    with pytest.raises(ContractError, match="must be a JSON object"):
        parse_call([1, 2])


class TestCacheWriteSplit:
    def test_total_without_split_counts_as_five_minute_writes(self) -> None:
        event = parse_call(raw(cache_creation_input_tokens=300))
        assert event.cache_creation_5m_input_tokens == 300
        assert event.cache_creation_1h_input_tokens == 0

    def test_split_without_total_fills_the_total(self) -> None:
        event = parse_call(
            raw(cache_creation_5m_input_tokens=100, cache_creation_1h_input_tokens=50)
        )
        assert event.cache_creation_input_tokens == 150

    def test_consistent_total_and_split_are_kept(self) -> None:
        event = parse_call(
            raw(
                cache_creation_input_tokens=150,
                cache_creation_5m_input_tokens=100,
                cache_creation_1h_input_tokens=50,
            )
        )
        assert (event.cache_creation_5m_input_tokens, event.cache_creation_1h_input_tokens) == (
            100,
            50,
        )

    def test_inconsistent_split_is_rejected(self) -> None:
        assert "cache_creation_input_tokens must equal" in reason(
            cache_creation_input_tokens=10,
            cache_creation_5m_input_tokens=100,
            cache_creation_1h_input_tokens=50,
        )

    def test_no_cache_writes_at_all(self) -> None:
        event = parse_call(raw())
        assert event.cache_creation_input_tokens == 0 == event.cache_creation_5m_input_tokens

    def test_negative_split_names_its_field(self) -> None:
        assert reason(cache_creation_1h_input_tokens=-1).startswith(
            "cache_creation_1h_input_tokens:"
        )


def test_uuid7_is_version_7_and_sorted_within_one_millisecond() -> None:
    ids = [uuid7() for _ in range(5000)]
    assert all(i.version == 7 and i.variant == uuid.RFC_4122 for i in ids)
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    millis = ids[0].int >> 80
    now = datetime.now(UTC).timestamp() * 1000
    assert abs(millis - now) < 5000


def test_event_ids_default_to_uuid7_and_partition_keys_group_a_conversation() -> None:
    a = parse_call(raw())
    b = parse_call(raw())
    assert a.event_id.version == 7 and a.event_id < b.event_id
    assert a.partition_key == b"acme:conv-1"
    assert a.source is Source.CHAT


def test_entity_renamed_validates_and_has_its_own_key() -> None:
    renamed = EntityRenamed(tenant_id="acme", source=Source.AGENT, source_id="a1", name="Scout")
    assert renamed.partition_key == b"acme:agent:a1"
    assert EntityRenamed.model_validate_json(renamed.to_json()) == renamed
    with pytest.raises(ValidationError) as info:
        EntityRenamed(tenant_id="acme", source="agent", source_id="a1", name="")  # type: ignore[arg-type]
    assert describe_validation_error(info.value).startswith("name:")


def test_events_are_immutable() -> None:
    event = UsageEvent.model_validate(raw())
    with pytest.raises(ValidationError):
        event.input_tokens = 5  # type: ignore[misc]


def test_v2_billing_fields_use_the_sdk_names_and_values() -> None:
    event = parse_call(
        raw(service_tier="batch", speed="fast", inference_geo="us", web_search_requests=3,
            web_fetch_requests=2, thinking_tokens=15)
    )  # fmt: skip
    assert (event.service_tier, event.speed, event.inference_geo) == ("batch", "fast", "us")
    assert (event.web_search_requests, event.web_fetch_requests, event.thinking_tokens) == (
        3,
        2,
        15,
    )
    defaults = parse_call(raw())  # not reported: standard tier, no tools
    assert (defaults.service_tier, defaults.speed, defaults.web_search_requests) == (None,) * 3
    # the SDK's Usage fields are Optional: null is "not reported", never a dead letter
    nulls = dict.fromkeys(("service_tier", "speed", "inference_geo", "web_search_requests",
                           "web_fetch_requests", "thinking_tokens"))  # fmt: skip
    base = raw(event_id=str(defaults.event_id))
    assert parse_call({**base, **nulls}) == parse_call(base)


def test_a_v1_event_is_accepted_as_before_but_carries_no_v2_fields() -> None:
    v1 = parse_call(raw(schema_version=1))
    assert v1.schema_version == 1 and v1.service_tier is None
    assert "schema_version 1 has no field speed" in reason(schema_version=1, speed="fast")


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"service_tier": "flex"}, "service_tier"),
        ({"speed": "turbo"}, "speed"),
        ({"web_search_requests": -1}, "web_search_requests"),
        ({"web_fetch_requests": "3"}, "web_fetch_requests"),
        ({"thinking_tokens": 21}, "thinking_tokens must not exceed output_tokens"),
        ({"inference_geo": "x" * 33}, "inference_geo"),
    ],
)
def test_bad_v2_values_are_rejected_with_a_reason_naming_the_field(
    overrides: dict[str, Any], field: str
) -> None:
    assert field in reason(**overrides)


def test_a_v1_event_built_with_the_contract_is_written_as_v1() -> None:
    v1 = parse_call(raw(schema_version=1))
    wire = json.loads(v1.to_json())
    assert wire["schema_version"] == 1 and "service_tier" not in wire
    assert parse_call(wire) == v1


flat_values = st.one_of(
    st.text(), st.integers(), st.floats(), st.booleans(), st.none()
)  # every kind a metadata value may be, non-BMP characters and NaN included


@given(st.dictionaries(st.text(), flat_values, max_size=12))
def test_the_cheap_metadata_size_bound_is_never_below_the_json_length(
    flat: dict[str, str | int | float | bool | None],
) -> None:
    """The size rule skips encoding metadata the bound already shows small: only safe if
    the bound holds for every value."""
    assert json_length_bound(flat) >= len(json.dumps(flat, separators=(",", ":")))


def test_metadata_just_over_the_limit_is_still_rejected_when_the_bound_is_not_met() -> None:
    fits = {"k": "x" * (MAX_METADATA_BYTES - 8)}  # exactly the limit as JSON
    assert len(json.dumps(fits, separators=(",", ":"))) == MAX_METADATA_BYTES
    assert parse_call(raw(metadata=fits)).metadata == fits
    with pytest.raises(ContractError, match=r"metadata: .*larger than"):
        parse_call(raw(metadata={"k": "x" * (MAX_METADATA_BYTES - 7)}))


def test_every_message_writes_the_attribute_key_rule_derived_from_the_one_pattern() -> None:
    from llm_usage.settings import Settings
    from query_api.attributes import AttributeParamError, parse_filters
    from query_api.ingest.genai import SpanMapping

    assert ATTRIBUTE_KEY_RULE == "^[a-z][a-z0-9_.]{0,63}$"
    assert f"^{ATTRIBUTE_KEY.pattern}$" == ATTRIBUTE_KEY_RULE
    message = re.escape(f"key 'User' must match {ATTRIBUTE_KEY_RULE}")
    with pytest.raises(ValidationError, match=message):
        UsageEvent.model_validate(raw(attributes={"User": "x"}))
    with pytest.raises(AttributeParamError, match=re.escape(f"must match {ATTRIBUTE_KEY_RULE}")):
        parse_filters([("attr.User", "x")])
    with pytest.raises(ValueError, match=message):
        SpanMapping(attributes={"User": ["x"]})
    with pytest.raises(ValidationError, match=re.escape(f"({ATTRIBUTE_KEY_RULE})")):
        Settings(alert_spike_attribute_keys="End-User")


@pytest.mark.parametrize("key", [" user", "user ", "user\n", "\tuser", "\u00a0user", "User"])
def test_an_attribute_key_must_match_the_rule_as_sent_nothing_is_stripped(key: str) -> None:
    expected = f"attributes: Value error, key {key!r} must match {ATTRIBUTE_KEY_RULE}"
    assert reason(attributes={key: "a"}) == expected


def test_attribute_keys_never_collide_and_values_are_stripped() -> None:
    # once stripped, " k0" would be k0: a value would be lost silently; it is rejected instead
    colliding = {**{f"k{i}": "v" for i in range(15)}, " k0": "w"}
    assert reason(attributes=colliding) == (
        f"attributes: Value error, key ' k0' must match {ATTRIBUTE_KEY_RULE}"
    )
    # values are stripped like every string of the contract, then measured
    assert parse_call(raw(attributes={"user": " u-1\n", "team.id": "t 7"})).attributes == {
        "user": "u-1",
        "team.id": "t 7",
    }
    assert reason(attributes={"user": " \t "}) == (
        "attributes: Value error, value of 'user' must be 1 to 256 characters"
    )
    assert parse_call(raw(attributes={"user": " " + "x" * 256 + " "})).attributes["user"] == (
        "x" * 256
    )


def test_the_well_known_attribute_keys_are_the_ones_every_doc_lists() -> None:
    from pathlib import Path

    from producers import instrument as instrumentation
    from producers.contract import WELL_KNOWN_ATTRIBUTES
    from query_api.ingest.genai import DEFAULT_ATTRIBUTE_NAMES

    root = Path(__file__).resolve().parents[2]
    wire = (root / "producers" / "WIRE_FORMAT.md").read_text()
    table = wire[wire.index("| key | meaning |") :].split("\n\n", 1)[0]
    assert tuple(re.findall(r"^\| `([a-z0-9_.]+)` \|", table, re.M)) == WELL_KNOWN_ATTRIBUTES
    readme = (root / "README.md").read_text()
    sentence = readme[readme.index("**Attributes** say what a call is for") :]
    sentence = sentence[: sentence.index("or any key")]
    assert tuple(re.findall(r"`([a-z0-9_.]+)`", sentence)) == WELL_KNOWN_ATTRIBUTES
    for doc in (instrumentation.__doc__, instrumentation.usage_attributes.__doc__):
        assert doc is not None and "WELL_KNOWN_ATTRIBUTES" in doc
        listed = doc[doc.index("WELL_KNOWN_ATTRIBUTES") :]
        listed = re.split(r"\bany\s", listed, maxsplit=1)[0]  # "or any key", "; any other"
        assert tuple(re.findall(r"``([a-z0-9_.]+)``", listed)) == WELL_KNOWN_ATTRIBUTES
    assert set(DEFAULT_ATTRIBUTE_NAMES) <= set(WELL_KNOWN_ATTRIBUTES)  # OTLP's own names
    assert all(ATTRIBUTE_KEY.fullmatch(key) for key in WELL_KNOWN_ATTRIBUTES)
