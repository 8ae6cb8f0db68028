"""Offline push deliveries, one attempt at a time: the checks right before sending, the lease,
and the outcome.

A delivery row is one push to one target, planned by domain/push_planning.py; its payload is
built by domain/push_payloads.py. Right before sending, everything is checked again (still
offline, unread, not deleted, not muted, level, TTL), the row is leased (`sending`), the
HTTP/SMTP call happens outside any transaction, and the outcome follows the taxonomy of
push/base.py: sent, gone (subscription deleted), retry later with backoff and jitter
(Retry-After honoured, never past the TTL), or a dead letter.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.events import is_online
from core.services import Services
from domain import push as subscriptions
from domain import push_payloads
from domain.push_planning import RETRACT
from models import PushDelivery, PushSubscription
from models.push import PLATFORM_TARGET
from push.base import Digest, Outcome, Push, Result, Target

logger = logging.getLogger(__name__)

MAX_COUNTDOWN_S = 900.0  # well below the broker's visibility timeout; the sweeper covers longer


@dataclass(frozen=True)
class Job:
    """A claimed delivery, ready to hand to its provider outside any transaction."""

    delivery_id: str
    provider: str  # webpush | webhook | email | platform
    target: Target
    message: Push | Digest
    attempts: int
    watermark: datetime | None = None  # e-mail: newest message included


@dataclass(frozen=True)
class Prepared:
    job: Job | None = None
    wait_s: float | None = None  # not due yet: run again in this many seconds


def prepare(svc: Services, session: Session, delivery_id: str, now: datetime) -> Prepared:
    """Claim a due delivery and build what to send, or finish it when it must not go out."""
    stmt = select(PushDelivery).where(PushDelivery.id == delivery_id)
    if svc.dialect != "sqlite":
        stmt = stmt.with_for_update()
    row = session.scalar(stmt)
    if row is None:
        logger.warning("push delivery %s not found", delivery_id)
        return Prepared()
    leased = row.state == "sending" and (row.lease_until is None or row.lease_until > now)
    if row.state not in ("pending", "sending") or leased:
        return Prepared()  # finished, or another worker holds it
    if row.due_at > now + timedelta(milliseconds=50):
        return Prepared(wait_s=(row.due_at - now).total_seconds())
    if row.expires_at <= now:
        _finish(row, "expired", now, "ttl passed before it could be sent")
        return Prepared()
    target = _target(svc, session, row)
    if target is None:
        _finish(row, "gone", now, "subscription removed")
        return Prepared()
    watermark: datetime | None = None
    message: Push | Digest | None
    if row.purpose == RETRACT:
        message = push_payloads.retract_push(row, now)
    elif row.kind == "email":
        if is_online(svc.redis, row.user_id):
            _finish(row, "skipped", now, "online")
            return Prepared()
        sub = session.get(PushSubscription, row.target)
        assert sub is not None
        built = push_payloads.digest(svc, session, row.user_id, sub.digest_watermark, now)
        if built is None:
            _finish(row, "skipped", now, "nothing unread")
            return Prepared()
        message, watermark = built
    else:
        message, why = push_payloads.notify_push(svc, session, row, now)
        if message is None:
            _finish(row, "skipped", now, why)
            return Prepared()
    row.state = "sending"
    row.attempts += 1
    row.lease_until = now + timedelta(seconds=svc.settings.push_timeout_s * 3 + 30)
    return Prepared(Job(row.id, row.kind, target, message, row.attempts, watermark))


def _finish(row: PushDelivery, state: str, now: datetime, reason: str | None) -> None:
    row.state, row.reason, row.finished_at, row.lease_until = state, reason, now, None
    logger.info(
        "push delivery %s %s%s",
        row.id,
        state,
        f": {reason}" if reason else "",
        extra={"user_id": row.user_id, "conversation_id": row.conversation_id},
    )


def _target(svc: Services, session: Session, row: PushDelivery) -> Target | None:
    if row.target == PLATFORM_TARGET:
        s = svc.settings
        if not s.platform_webhook_url:
            return None
        return Target("platform", s.platform_webhook_url, {"secret": s.platform_webhook_secret})
    sub = session.get(PushSubscription, row.target)
    return subscriptions.open_target(svc, sub) if sub is not None else None


# --- after sending -----------------------------------------------------------------------------


def backoff(svc: Services, attempts: int) -> float:
    """Exponential backoff with jitter (half fixed, half random) so retries do not stampede."""
    s = svc.settings
    delay = min(s.push_retry_max_s, s.push_retry_base_s * (2 ** max(0, attempts - 1)))
    return delay * (0.5 + random.random() / 2)


def finish(
    svc: Services, session: Session, job: Job, result: Result, now: datetime
) -> float | None:
    """Record the outcome of a send. Returns seconds until the retry, or None when done."""
    stmt = select(PushDelivery).where(PushDelivery.id == job.delivery_id)
    if svc.dialect != "sqlite":
        stmt = stmt.with_for_update()
    row = session.scalar(stmt)
    if row is None or row.state != "sending" or row.attempts != job.attempts:
        return None  # the lease ran out and another run took over
    row.last_status = result.status
    if result.outcome is Outcome.OK:
        _finish(row, "sent", now, None)
        sub = session.get(PushSubscription, row.target)
        if sub is not None:
            sub.last_success_at = now
            if job.watermark is not None:
                sub.digest_watermark = job.watermark
        return None
    if result.outcome is Outcome.GONE and row.target != PLATFORM_TARGET:
        subscriptions.remove_gone(svc, session, row.target)
        _finish(row, "gone", now, result.reason)
        return None
    if result.outcome is not Outcome.RETRY:
        _finish(row, "dead", now, result.reason or "permanent failure")
        return None
    if row.attempts >= svc.settings.push_max_attempts:
        _finish(row, "dead", now, f"gave up after {row.attempts} attempts: {result.reason}")
        return None
    wait = backoff(svc, row.attempts)
    if result.retry_after_s is not None:
        wait = max(wait, result.retry_after_s)
    if now + timedelta(seconds=wait) >= row.expires_at:
        _finish(row, "expired", now, f"next attempt would pass the ttl ({result.reason})")
        return None
    newer = session.scalar(
        select(PushDelivery.id).where(
            PushDelivery.target == row.target,
            PushDelivery.collapse_key == row.collapse_key,
            PushDelivery.state == "pending",
            PushDelivery.id != row.id,
        )
    )
    if newer is not None:  # a newer push for the same notification carries the latest count
        _finish(row, "skipped", now, "superseded")
        return None
    row.state, row.reason, row.lease_until = "pending", result.reason, None
    row.due_at = now + timedelta(seconds=wait)
    logger.info(
        "push delivery %s retry in %.1fs: %s",
        row.id,
        wait,
        result.reason,
        extra={"user_id": row.user_id},
    )
    return wait
