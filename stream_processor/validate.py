"""Turn one calls-topic message into valid events and dead letters, never raising.

The contract's own functions (``decode_calls``/``parse_call``) are the reference. The fast
path validates a whole JSON array in one pydantic call, which is several times cheaper per
event than decoding and validating each element; only a message that fails the fast path is
re-read element by element, so that good events in it survive and each bad one gets its
own reason.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from pydantic import TypeAdapter, ValidationError

from producers.contract import ContractError, UsageEvent, decode_calls, parse_call

_BATCH = TypeAdapter(list[UsageEvent])


@dataclass(frozen=True, slots=True)
class Rejected:
    """One dead letter: what to publish (``payload``), why, and which element it was.

    ``index`` is None when the whole message was unusable; ``payload`` is then the original
    message bytes. For one bad element of an array it is that element as JSON.
    """

    reason: str
    payload: bytes
    index: int | None = None


def validate_message(
    value: bytes | None, default_tenant: str = ""
) -> tuple[list[UsageEvent], list[Rejected]]:
    """Valid events of a message (in message order) and its rejected parts."""
    if value is None:
        return [], [Rejected("empty message (null value)", b"")]
    if value[:1] == b"[":
        try:
            return _BATCH.validate_json(value), []
        except ValidationError:
            pass  # fall back to per-element validation for exact reasons
    try:
        raws = decode_calls(value)
    except ContractError as exc:
        return [], [Rejected(exc.reason, bytes(value))]
    events: list[UsageEvent] = []
    rejected: list[Rejected] = []
    single = value.lstrip()[:1] == b"{"
    for index, raw in enumerate(raws):
        if default_tenant and isinstance(raw, dict) and not raw.get("tenant_id"):
            raw = {**raw, "tenant_id": default_tenant}
        try:
            events.append(parse_call(raw))
        except ContractError as exc:
            payload = bytes(value) if single else _dump(raw)
            rejected.append(Rejected(exc.reason, payload, None if single else index))
    return events, rejected


def _dump(raw: Any) -> bytes:
    return json.dumps(raw, separators=(",", ":"), ensure_ascii=False).encode()
