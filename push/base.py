"""The provider interface and the delivery error taxonomy (after Sygnal's pushkins).

Every provider answers with a `Result` whose outcome decides what happens next:
`OK` done; `GONE` the target no longer exists (delete the subscription); `RETRY` temporary,
try again after a backoff (at least `retry_after` when the far end said so); `PERMANENT` give
up now and keep a dead letter saying why.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Protocol


class Outcome(enum.Enum):
    OK = "ok"
    GONE = "gone"
    RETRY = "retry"
    PERMANENT = "permanent"


@dataclass(frozen=True)
class Result:
    outcome: Outcome
    status: int | None = None
    retry_after_s: float | None = None
    reason: str = ""  # short and free of payload text: it is stored and logged


@dataclass(frozen=True)
class Push:
    """What to deliver: a JSON event, its replace/collapse key and how long it stays useful."""

    event: dict[str, Any]
    topic: str  # same topic → a later push replaces an undelivered earlier one
    ttl_s: int
    urgency: str = "normal"  # RFC 8030 §5.3: very-low | low | normal | high


@dataclass(frozen=True)
class Digest:
    """An e-mail digest: already rendered, in the user's preview mode."""

    subject: str
    body: str


@dataclass(frozen=True)
class Target:
    """Where to deliver: an endpoint/URL/address and its opened secrets."""

    kind: str
    address: str
    secrets: dict[str, str] = field(default_factory=dict)


class Provider(Protocol):
    kind: str

    def send(self, target: Target, message: Push | Digest) -> Result: ...


def retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date); None if absent/bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def classify_http(status: int, retry_after_header: str | None = None) -> Result:
    """The HTTP status of a push service or webhook → what to do next."""
    if 200 <= status < 300:
        return Result(Outcome.OK, status)
    if status in (404, 410):
        return Result(Outcome.GONE, status, reason=f"http {status}: target gone")
    if status in (408, 425, 429) or status >= 500:
        return Result(
            Outcome.RETRY, status, retry_after(retry_after_header), reason=f"http {status}"
        )
    return Result(Outcome.PERMANENT, status, reason=f"http {status}")
