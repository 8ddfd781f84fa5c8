"""Validation never raises: good events pass, each bad part gets a dead letter and reason."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from producers.contract import (
    MAX_TOKENS,
    ContractError,
    UsageEvent,
    decode_calls,
    encode_calls,
    parse_call,
)
from stream_processor.validate import validate_message, vouch

FIELDS = tuple(UsageEvent.model_fields)


def _fields(event: Any) -> dict[str, Any]:
    """Every contract field of an event, with the time's zone (equal times may differ in it)."""
    values = {name: getattr(event, name) for name in FIELDS}
    values["occurred_at.tzinfo"] = event.occurred_at.tzinfo
    return values


def _event(**kw: object) -> UsageEvent:
    values: dict[str, object] = {"tenant_id": "t1", "occurred_at": datetime.now(UTC),
                                 "source": "chat", "source_id": "c1", "model": "claude-opus-4-5",
                                 "input_tokens": 10, "output_tokens": 5}  # fmt: skip
    values.update(kw)
    return UsageEvent(**values)  # type: ignore[arg-type]


def test_fast_path_equals_the_contract_parser() -> None:
    events = [_event(cache_creation_input_tokens=7), _event(source_name="T", metadata={"a": 1})]
    assert vouch(encode_calls(events)) is not None  # what producers send takes the fast path
    valid, rejected = validate_message(encode_calls(events))
    assert rejected == []
    assert [_fields(e) for e in valid] == [_fields(e) for e in events]
    assert [_fields(e) for e in valid] == [
        _fields(parse_call(json.loads(e.to_json()))) for e in events
    ]


def test_single_object_message_is_accepted() -> None:
    event = _event()
    valid, rejected = validate_message(event.to_json())
    assert rejected == [] and [_fields(e) for e in valid] == [_fields(event)]


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
    assert [_fields(e) for e in valid] == [_fields(good)]
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


def test_times_msgspec_would_round_are_read_by_the_contract() -> None:
    """Nanosecond times (Go's RFC3339Nano) are truncated to the microsecond, as pydantic does."""
    raw = json.loads(_event().to_json())
    for text in ["2026-01-02T03:04:05.123456789Z", "2026-01-02T03:04:05.123456\\u0037Z"]:
        value = json.dumps([raw]).encode().replace(raw["occurred_at"].encode(), text.encode())
        assert vouch(value) is None
        valid, rejected = validate_message(value)
        assert rejected == []
        assert valid[0].occurred_at == datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)


# Values near every bound and every form the two readers could disagree on.
_NOW = datetime.now(UTC)
_texts = st.one_of(
    st.sampled_from(["a", " a", "a ", "\ta", "a\u00a0", "a\x1f", "\u2028a", "", "é", "a b"]),
    st.text(min_size=0, max_size=3),
    st.sampled_from([127, 128, 129, 255, 256, 257, 511, 512, 513]).map(lambda n: "x" * n),
    st.integers(-2, 2),
    st.none(),
)
_counts = st.one_of(
    st.sampled_from([0, 1, 7, MAX_TOKENS, MAX_TOKENS + 1, -1, 2**64, 1.0, True, "3", None]),
    st.integers(0, 50),
)


@st.composite
def _times(draw: st.DrawFn, edge: bool) -> Any:
    """RFC 3339 times; at an edge, forms and moments the two readers could disagree on."""
    if not edge:
        seconds = draw(st.integers(-86400 * 30, 3000))
        return (_NOW + timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")
    # Around the skew bound (now + 1 h) by a minute each way, from the time of drawing: a
    # moment a second past it, drawn at import, is refused when the test starts and taken
    # one second later, so a run at that instant saw the two readers "disagree".
    moment = datetime.now(UTC) + timedelta(
        seconds=draw(st.sampled_from([0, -1, -3 * 365 * 86400, 3540, 3660, 86400]))
    )
    text = moment.strftime("%Y-%m-%d") + draw(st.sampled_from("Tt _")) + moment.strftime("%H:%M:%S")
    digits = draw(st.sampled_from([0, 1, 6, 7, 9]))
    if digits:
        text += "." + "".join(draw(st.sampled_from("059")) for _ in range(digits))
    text += draw(st.sampled_from(["Z", "z", "+00:00", "-00:00", "+05:30", "+0530", "-23:59", ""]))
    other = st.sampled_from([int(moment.timestamp()), "yesterday", moment.isoformat()])
    return text if draw(st.integers(0, 5)) else draw(other)


# keys at the rule's edges; white space at an end is refused as sent, never stripped
_ATTRIBUTE_KEYS = (
    "user", "User", "a.b_1", "1a", " user", "user ", "user\n", "\tuser", "x" * 64, "x" * 65,
)  # fmt: skip

_OPTIONAL = {
    "event_id": st.one_of(st.uuids().map(str), st.uuids().map(lambda u: u.hex), st.just("x")),
    "schema_version": st.sampled_from([1, 2, 3, 2.0, "2", None]),
    "source_name": _texts,
    "input_tokens": _counts,
    "output_tokens": _counts,
    "cache_creation_input_tokens": _counts,
    "cache_creation_5m_input_tokens": _counts,
    "cache_creation_1h_input_tokens": _counts,
    "cache_read_input_tokens": _counts,
    "service_tier": st.sampled_from(["standard", "priority", "batch", "Batch", "", None]),
    "speed": st.sampled_from(["standard", "fast", "slow", None]),
    "inference_geo": _texts,
    "web_search_requests": _counts,
    "web_fetch_requests": _counts,
    "thinking_tokens": _counts,
    "duration_ms": _counts,
    "status": st.sampled_from(["ok", "error", "OK", None]),
    "request_id": _texts,
    "metadata": st.one_of(
        st.dictionaries(
            _texts.filter(lambda t: isinstance(t, str)),
            st.one_of(_texts, st.floats(allow_nan=False), st.booleans(), st.lists(st.none())),
            max_size=3,
        ),
        st.just({"big": "x" * 20_000}),
        st.just([]),
    ),
    "attributes": st.one_of(
        st.dictionaries(
            st.sampled_from(_ATTRIBUTE_KEYS),
            st.one_of(_texts, st.sampled_from(["x" * 256, "x" * 257, "\u00e9" * 256, " x\n"])),
            max_size=3,
        ),
        st.just({f"k{i}": "v" for i in range(17)}),
        st.just({f"k{i}": "v" for i in range(16)}),
        st.just({**{f"k{i}": "v" for i in range(16)}, " k0": "w"}),  # collide once stripped
        st.just({"k0": "v", "k0 ": "w"}),
        st.just([]),
    ),
    "colour": st.just("blue"),
}


_VALID = {
    "tenant_id": st.sampled_from(["t1", "é", "a b", "x" * 128]),
    "source": st.sampled_from(["chat", "agent", "memory"]),
    "source_id": st.sampled_from(["c1", "x" * 256]),
    "model": st.sampled_from(["claude-opus-4-5", "claude-sonnet-4-6", "unknown-model"]),
    "event_id": st.uuids().map(str),
    "schema_version": st.sampled_from([1, 2]),
    "source_name": st.sampled_from(["Planning", "", "x" * 512]),
    "service_tier": st.sampled_from(["standard", "priority", "batch"]),
    "speed": st.sampled_from(["standard", "fast"]),
    "status": st.sampled_from(["ok", "error"]),
    "metadata": st.dictionaries(
        st.sampled_from(["a", "service", "é"]),
        st.one_of(st.text(max_size=3), st.integers(), st.floats(allow_nan=False), st.booleans()),
        max_size=3,
    ),
    "attributes": st.dictionaries(
        st.sampled_from(["user", "customer", "feature", "environment", "prompt_version"]),
        st.one_of(st.text(min_size=1, max_size=4), st.just("x" * 256)),
        max_size=4,
    ),
}


@st.composite
def _raw_events(draw: st.DrawFn) -> dict[str, Any]:
    """Mostly valid events (so that the fast path is taken), a few fields at an edge."""

    def value(name: str) -> Any:
        valid = _VALID.get(name)
        edge = draw(st.integers(0, 11)) == 0
        if valid is not None and not edge:
            return draw(valid)
        if name in ("tenant_id", "source_id", "model"):
            return draw(_texts)
        if name == "occurred_at":
            return draw(_times(edge))
        if name == "source":
            return draw(st.sampled_from(["chat", " chat", "bot", 1]))
        counts = _counts if edge else st.integers(0, 50)
        return draw(_OPTIONAL.get(name, counts) if name not in _COUNTS else counts)

    raw = {
        name: value(name) for name in ("tenant_id", "occurred_at", "source", "source_id", "model")
    }
    for name in draw(st.lists(st.sampled_from(sorted(raw)), max_size=1)):
        if draw(st.integers(0, 9)) == 0:
            del raw[name]
    for name in draw(st.sets(st.sampled_from(sorted(_OPTIONAL)), max_size=10)):
        if name != "colour" or draw(st.integers(0, 9)) == 0:
            raw[name] = value(name)
    return raw


_COUNTS = {
    "input_tokens",
    "output_tokens",
    "cache_creation_input_tokens",
    "cache_creation_5m_input_tokens",
    "cache_creation_1h_input_tokens",
    "cache_read_input_tokens",
    "web_search_requests",
    "web_fetch_requests",
    "thinking_tokens",
    "duration_ms",
}


def _reference(raws: list[Any]) -> list[dict[str, Any] | str]:
    """The contract's verdict on each element: its fields, or the reason it is rejected."""
    verdicts: list[dict[str, Any] | str] = []
    for raw in raws:
        try:
            verdicts.append(_fields(parse_call(raw)))
        except ContractError as exc:
            verdicts.append(exc.reason)
    return verdicts


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    raws=st.lists(_raw_events(), min_size=1, max_size=3),
    ascii_only=st.booleans(),
    single=st.booleans(),
)
def test_every_path_gives_the_contracts_verdict(
    raws: list[dict[str, Any]], ascii_only: bool, single: bool
) -> None:
    """The fast path vouches only for what the contract accepts, read to equal values."""
    payload: Any = raws[0] if single else raws
    value = json.dumps(payload, ensure_ascii=ascii_only).encode()
    note(f"message: {value!r}")
    expected = _reference(raws[:1] if single else raws)
    for verdict, raw in zip(expected, raws, strict=False):
        if isinstance(verdict, dict) and "event_id" not in raw:
            verdict.pop("event_id")  # generated: a fresh UUIDv7 on either path
    fast = vouch(value)
    if fast is not None:
        got = [_fields(e) for e in fast]
        for fields, raw in zip(got, raws, strict=False):
            if "event_id" not in raw:
                fields.pop("event_id")
        assert got == expected
    valid, rejected = validate_message(value)
    verdicts: list[dict[str, Any] | str] = [_fields(e) for e in valid]
    for fields, raw in zip(
        verdicts,
        [r for r, v in zip(raws, expected, strict=False) if isinstance(v, dict)],
        strict=False,
    ):
        if isinstance(fields, dict) and "event_id" not in raw:
            fields.pop("event_id")
    assert verdicts == [v for v in expected if isinstance(v, dict)]
    assert [r.reason for r in rejected] == [v for v in expected if isinstance(v, str)]


@pytest.mark.parametrize(
    "extra",
    [
        ',"tenant_id":"b"',  # a repeated key: the last one counts, on every path
        ',"metadata":{"k":1,"k":2}',
        ',"input_tokens":1,"input_tokens":2',
        ',"source_name":"\\ud800"',  # a lone surrogate: not text
        ',"source_name":"a\\u0000b"',
        ',"attributes":{"user":"a","user":"b"}',
        ',"attributes":{"user":"a"," user":"b"}',  # keys are taken as sent, never stripped
        ',"attributes":{"user\\n":"a"}',
        ',"attributes":{"\\u0020user":"a"}',
        ',"attributes":{"user":" a\\t"}',  # values are stripped, as every string
        ',"attributes":{"user":" \\n"}',
    ],
)
def test_odd_json_gets_the_contracts_verdict(extra: str) -> None:
    moment = datetime.now(UTC).isoformat()
    head = f'{{"tenant_id":"a","occurred_at":"{moment}","source":"chat","source_id":"s","model":"m"'
    value = f"[{head}{extra}}}]".encode()
    expected = _reference(decode_calls(value))
    valid, rejected = validate_message(value)
    got = [_fields(e) for e in valid] + [r.reason for r in rejected]
    for fields in (*got, *expected):
        if isinstance(fields, dict):
            fields.pop("event_id")
    assert got == expected


def test_attribute_keys_are_read_as_sent_on_both_paths() -> None:
    """A key with white space is refused, not stripped into another key; values are stripped."""
    good = json.loads(_event().to_json())
    for key in (" user", "user\n", "k0 "):
        attributes = {"k0": "v", key: "w"}
        value = json.dumps([{**good, "attributes": attributes}]).encode()
        assert vouch(value) is None
        valid, rejected = validate_message(value)
        assert valid == [] and len(rejected) == 1
        assert f"key {key!r} must match" in rejected[0].reason
    stripped = json.dumps([{**good, "attributes": {"user": " u-1\t"}}]).encode()
    assert vouch(stripped) is None  # the fast path leaves stripping to the contract
    (event,), rejected = validate_message(stripped)
    assert event.attributes == {"user": "u-1"} and rejected == []
    plain = json.dumps([{**good, "attributes": {"user": "u-1"}}]).encode()
    vouched = vouch(plain)
    assert vouched is not None and vouched[0].attributes == {"user": "u-1"}


def test_a_lone_surrogate_is_dead_lettered_not_raised() -> None:
    """Text UTF-8 cannot carry reaches the dead-letter topic escaped (it used to raise)."""
    good = json.loads(_event().to_json())
    bad = {**good, "source_name": "\ud800"}
    value = json.dumps([good, bad]).encode()  # ASCII JSON: the surrogate as \ud800
    valid, rejected = validate_message(value)
    assert [e.source_id for e in valid] == ["c1"]
    assert [r.index for r in rejected] == [1] and "source_name" in rejected[0].reason
    assert json.loads(rejected[0].payload)["source_name"] == "\ud800"


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (
            b'[{"tenant_id":"a","occurred_at":"0001-01-01T00:30:00+01:00","source":"chat",'
            b'"source_id":"s","model":"m"}]',
            "occurred_at: Value error, is out of range",
        ),
        (b'[{"input_tokens":' + b"9" * 5000 + b"}]", "not valid JSON: Exceeds the limit"),
        (b"[" * 1000 + b"]" * 1000, "not valid JSON: maximum recursion depth"),
        (b'{"a":' * 1000 + b"1" + b"}" * 1000, "not valid JSON: maximum recursion depth"),
    ],
)
def test_inputs_that_used_to_raise_are_dead_lettered(value: bytes, reason: str) -> None:
    """A time in no UTC year, a 5,000-digit integer, nesting deeper than Python's stack."""
    valid, rejected = validate_message(value)
    assert valid == [] and len(rejected) == 1
    assert rejected[0].reason.startswith(reason)
