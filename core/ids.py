"""Identifiers: ULIDs sort by creation time, so ids double as a stable secondary order."""

from __future__ import annotations

from datetime import UTC, datetime

from ulid import ULID


def new_id() -> str:
    return str(ULID())


def utcnow() -> datetime:
    return datetime.now(UTC)
