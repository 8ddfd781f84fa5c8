"""Records paging: page numbers for the page's navigation, an opaque keyset cursor for depth.

The cursor is the (occurred_at, event_id) of the last row seen, the table's sort key, so the
next page is a range read however deep it is.
"""

from __future__ import annotations

import base64
import binascii
import uuid


class CursorError(ValueError):
    """The cursor was not produced by this API."""


def total_pages(total: int, page_size: int) -> int:
    return -(-total // page_size)


def encode_cursor(occurred_at_ms: int, event_id: str) -> str:
    raw = f"{occurred_at_ms}:{event_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[int, str]:
    """(occurred_at ms, event_id) from a cursor; :class:`CursorError` if malformed."""
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        at, _, event_id = text.partition(":")
        return int(at), str(uuid.UUID(event_id))
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise CursorError("invalid cursor; pass next_cursor from a previous response") from exc
