"""``attr.<key>=<value>`` filters and ``by=attr.<key>`` groupings: parsed and checked here,
against the same rules the event contract enforces, so a bad one is a 422 with a message
and never reaches SQL (where keys and values are bound parameters anyway)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

from producers.contract import (
    ATTRIBUTE_KEY,
    ATTRIBUTE_KEY_RULE,
    MAX_ATTRIBUTE_VALUE,
    MAX_ATTRIBUTES,
)

PREFIX = "attr."
KEY_RULE = ATTRIBUTE_KEY_RULE  # the contract's, as messages write it
# How the OpenAPI document describes the filter: FastAPI cannot declare dynamic names.
FILTER_PARAMETER = {
    "name": "attr.<key>",
    "in": "query",
    "required": False,
    "description": (
        "only calls whose attribute <key> has this value, e.g. `attr.customer=acme`;"
        f" repeatable with different keys (ANDed), at most {MAX_ATTRIBUTES}; keys match"
        f" {KEY_RULE}, values are 1 to {MAX_ATTRIBUTE_VALUE} characters"
    ),
    "schema": {"type": "string", "minLength": 1, "maxLength": MAX_ATTRIBUTE_VALUE},
}


class AttributeParamError(ValueError):
    """An ``attr.`` parameter breaks the rules; the message is for the user."""


def check_key(key: str, name: str) -> str:
    if not ATTRIBUTE_KEY.fullmatch(key):
        raise AttributeParamError(f"{name}: the attribute key must match {KEY_RULE}")
    return key


def parse_filters(params: Iterable[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    """The ``attr.<key>=<value>`` pairs among query ``params``, sorted by key."""
    found: dict[str, str] = {}
    for name, value in params:
        if not name.startswith(PREFIX):
            continue
        key = check_key(name[len(PREFIX) :], name)
        if key in found:
            raise AttributeParamError(f"{name} is given twice; one value per attribute key")
        if not 1 <= len(value) <= MAX_ATTRIBUTE_VALUE:
            raise AttributeParamError(
                f"{name}: the value must be 1 to {MAX_ATTRIBUTE_VALUE} characters"
            )
        found[key] = value
        if len(found) > MAX_ATTRIBUTES:
            raise AttributeParamError(f"at most {MAX_ATTRIBUTES} attr.<key> filters are allowed")
    return tuple(sorted(found.items()))


def parse_by(by: str) -> tuple[Literal["source", "model", "attr"], str | None]:
    """``source`` / ``model`` / ``attr.<key>`` -> (kind, attribute key or None)."""
    if by == "source":
        return "source", None
    if by == "model":
        return "model", None
    if by.startswith(PREFIX):
        return "attr", check_key(by[len(PREFIX) :], "by")
    raise AttributeParamError("by: use source, model or attr.<key>")
