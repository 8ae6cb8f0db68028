"""Shared retry policy: temporary faults (DB busy, Redis or broker away) retry with backoff."""

from __future__ import annotations

from typing import Any

import redis
import sqlalchemy.exc

TEMPORARY = (
    redis.ConnectionError,
    redis.TimeoutError,
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.InterfaceError,
)

PIPELINE: dict[str, Any] = {
    "autoretry_for": TEMPORARY,
    "retry_backoff": 0.5,
    "retry_backoff_max": 30,
    "retry_jitter": True,
    "max_retries": 20,
}
