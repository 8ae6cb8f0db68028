"""Opaque keyset cursors: base64url JSON, validated on the way back in."""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from domain.errors import Invalid


def encode_cursor(values: Mapping[str, Any]) -> str:
    raw = json.dumps(values, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def decode_cursor(cursor: str, keys: Sequence[str] | Mapping[str, type]) -> list[Any]:
    """The values under `keys`, in order; 422 for anything this server did not hand out.

    With `keys` as {name: type} each value must be of that type (`int` excludes booleans;
    `datetime` is read from an ISO string). A cursor is client input: a well-formed one with
    the wrong types must not reach SQL (PostgreSQL refuses a text seq that SQLite would take).
    """
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        data = json.loads(raw)
        values = [_storable(data[k]) for k in keys]
        if isinstance(keys, Mapping):
            values = [_typed(v, t) for v, t in zip(values, keys.values(), strict=True)]
        return values
    except (ValueError, KeyError, TypeError, RecursionError) as exc:
        raise Invalid(
            "the cursor is not valid; start again without it", {"cursor": ["invalid cursor"]}
        ) from exc


def _storable(value: Any) -> Any:
    """Cursors this server hands out hold only text a database takes: a NUL, or an unpaired
    surrogate (UnicodeEncodeError, a ValueError), is a forged one (it would be a 500 at SQL)."""
    if isinstance(value, str):
        value.encode()
        if "\x00" in value:
            raise ValueError("a NUL in a cursor")
    return value


def _typed(value: Any, kind: type) -> Any:
    if kind is datetime:
        if not isinstance(value, str):
            raise TypeError("not a timestamp")
        return datetime.fromisoformat(value)
    if kind is int and isinstance(value, bool):
        raise TypeError("not an integer")
    if not isinstance(value, kind):
        raise TypeError(f"not a {kind.__name__}")
    return value
