"""Identifiers: ULIDs sort by creation time, so ids double as a stable secondary order."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import overload

from ulid import ULID


def new_id() -> str:
    return str(ULID())


def utcnow() -> datetime:
    return datetime.now(UTC)


@overload
def iso(value: datetime) -> str: ...
@overload
def iso(value: None) -> None: ...
@overload
def iso(value: datetime | None) -> str | None: ...
def iso(value: datetime | None) -> str | None:
    """An instant as the API writes it: ISO 8601 / RFC 3339, UTC as "Z" (None stays None)."""
    return value.isoformat().replace("+00:00", "Z") if value is not None else None
