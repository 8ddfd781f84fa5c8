"""Validation never raises: good events pass, each bad part gets a dead letter and reason."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from producers.contract import UsageEvent, encode_calls, parse_call
from stream_processor.validate import validate_message


def _event(**kw: object) -> UsageEvent:
    values: dict[str, object] = {"tenant_id": "t1", "occurred_at": datetime.now(UTC),
                                 "source": "chat", "source_id": "c1", "model": "claude-opus-4-5",
                                 "input_tokens": 10, "output_tokens": 5}  # fmt: skip
    values.update(kw)
    return UsageEvent(**values)  # type: ignore[arg-type]


def test_fast_path_equals_the_contract_parser() -> None:
    events = [_event(cache_creation_input_tokens=7), _event(source_name="T", metadata={"a": 1})]
    valid, rejected = validate_message(encode_calls(events))
    assert rejected == []
    assert valid == events
    assert valid == [parse_call(json.loads(e.to_json())) for e in events]


def test_single_object_message_is_accepted() -> None:
    event = _event()
    assert validate_message(event.to_json()) == ([event], [])


def test_whole_message_failures_keep_the_original_bytes() -> None:
    for value, reason in [
        (b"\xff\xfe", "not valid JSON"),
        (b"{", "not valid JSON"),
        (b"42", "expected a JSON object or array"),
        (None, "null value"),
    ]:
        valid, rejected = validate_message(value)
        assert valid == []
        assert len(rejected) == 1 and reason in rejected[0].reason
        assert rejected[0].payload == (value or b"") and rejected[0].index is None


def test_bad_elements_are_rejected_one_by_one_and_good_ones_kept() -> None:
    good = _event()
    future = json.loads(_event().to_json())
    future["occurred_at"] = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    wrong_version = {**json.loads(_event().to_json()), "schema_version": 7}
    unknown_field = {**json.loads(_event().to_json()), "colour": "blue"}
    negative = {**json.loads(_event().to_json()), "output_tokens": -1}
    value = json.dumps([json.loads(good.to_json()), future, wrong_version, "x", unknown_field,
                        negative]).encode()  # fmt: skip
    valid, rejected = validate_message(value)
    assert valid == [good]
    assert [r.index for r in rejected] == [1, 2, 3, 4, 5]
    reasons = [r.reason for r in rejected]
    assert "occurred_at" in reasons[0] and "future" in reasons[0]
    assert reasons[1] == "schema_version: unsupported version 7"
    assert "JSON object" in reasons[2]
    assert "colour" in reasons[3]
    assert "output_tokens" in reasons[4]
    assert json.loads(rejected[1].payload) == wrong_version


def test_default_tenant_fills_missing_tenant_only_when_configured() -> None:
    raw = json.loads(_event().to_json())
    del raw["tenant_id"]
    value = json.dumps([raw]).encode()
    valid, rejected = validate_message(value)
    assert valid == [] and "tenant_id" in rejected[0].reason
    valid, rejected = validate_message(value, default_tenant="default")
    assert rejected == [] and valid[0].tenant_id == "default"
