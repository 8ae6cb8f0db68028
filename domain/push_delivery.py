"""Offline push deliveries: planning, the checks right before sending, payloads, outcomes.

A delivery row is one push to one target. It is planned `PARLEY_PUSH_DELAY_S` ahead; until it
is claimed, later messages collapse into it (the payload counts them). Right before sending,
everything is checked again (still offline, unread, not deleted, not muted, level, TTL), the
row is leased (`sending`), the HTTP/SMTP call happens outside any transaction, and the outcome
follows the taxonomy of push/base.py: sent, gone (subscription deleted), retry later with
backoff and jitter (Retry-After honoured, never past the TTL), or a dead letter.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from core.events import is_online
from core.ids import iso, new_id
from core.services import Services
from domain import outbox
from domain import push as subscriptions
from domain.audience import skip_reason
from domain.render import PREVIEW_CHARS, message_text
from models import (
    Conversation,
    Message,
    Notification,
    Participant,
    PushDelivery,
    PushSubscription,
    User,
)
from models.push import PLATFORM_TARGET
from push.base import Digest, Outcome, Push, Result, Target

logger = logging.getLogger(__name__)

DELIVER_TASK = "tasks.push.deliver"
NOTIFY, RETRACT = "notify", "retract"
DIGEST_KEY = "digest"
RETRACTABLE = ("webpush", "webhook", "platform")
MAX_COUNTDOWN_S = 900.0  # well below the broker's visibility timeout; the sweeper covers longer
DIGEST_MAX_CONVERSATIONS = 20


def topic(user_id: str, conversation_id: str | None) -> str:
    """RFC 8030 Topic: one per user and conversation, opaque to the push service."""
    digest = hashlib.sha256(f"{user_id}:{conversation_id}".encode()).digest()
    return base64.urlsafe_b64encode(digest).decode()[:32]


# --- planning --------------------------------------------------------------------------------


def plan_notify(
    svc: Services, session: Session, notes: Sequence[Notification], msg: Message, now: datetime
) -> list[tuple[str, float]]:
    """Upsert one pending delivery per target of each notified user.

    Returns (delivery id, seconds until due) for rows created now; rows that already existed
    absorbed the message (collapse) and are already scheduled.
    """
    settings = svc.settings
    if not notes:
        return []
    users = {n.user_id for n in notes}
    subs: dict[str, list[PushSubscription]] = {}
    stmt = select(PushSubscription).where(
        PushSubscription.user_id.in_(users), PushSubscription.verified_at.is_not(None)
    )
    for found in session.scalars(stmt):
        subs.setdefault(found.user_id, []).append(found)
    platform = bool(settings.platform_webhook_url)
    if not subs and not platform:
        return []
    pending = {
        (d.target, d.collapse_key): d
        for d in session.scalars(
            select(PushDelivery).where(
                PushDelivery.state == "pending",
                PushDelivery.user_id.in_(users),
                PushDelivery.collapse_key.in_([n.id for n in notes] + [DIGEST_KEY]),
            )
        )
    }
    delay = timedelta(seconds=settings.push_delay_s)
    ttl = timedelta(seconds=settings.push_ttl_s)
    created: list[tuple[str, float]] = []
    for note in notes:
        targets: list[tuple[str, str, PushSubscription | None]] = [
            (s.id, s.kind, s) for s in subs.get(note.user_id, [])
        ]
        if platform:
            targets.append((PLATFORM_TARGET, "platform", None))
        for target, kind, sub in targets:
            key = DIGEST_KEY if kind == "email" else note.id
            row = pending.get((target, key))
            if row is not None:  # collapse into the push not sent yet
                if (row.message_id or "") < msg.id:
                    row.message_id, row.notification_id = msg.id, note.id
                    row.conversation_id = note.conversation_id
                    if kind != "email":
                        row.expires_at = msg.created_at + ttl
                continue
            due = now + delay
            expires = msg.created_at + ttl
            if kind == "email" and sub is not None:
                window = timedelta(seconds=settings.push_email_digest_s)
                if sub.last_success_at is not None:
                    due = max(due, sub.last_success_at + window)
                expires = due + ttl
            row = PushDelivery(
                id=new_id(),
                user_id=note.user_id,
                target=target,
                kind=kind,
                purpose=NOTIFY,
                collapse_key=key,
                notification_id=note.id,
                conversation_id=note.conversation_id,
                message_id=msg.id,
                due_at=due,
                expires_at=expires,
            )
            session.add(row)
            pending[(target, key)] = row
            created.append((row.id, (due - now).total_seconds()))
    session.flush()
    return created


def retract(session: Session, notes: Sequence[Notification]) -> None:
    """The notifications were read: cancel their pushes not sent yet, and ask each target that
    got one to take it back (Web Push: same Topic replaces it; webhooks: a read event)."""
    from core.ids import utcnow

    ids = [n.id for n in notes]
    if not ids:
        return
    now = utcnow()
    session.execute(
        update(PushDelivery)
        .where(
            PushDelivery.notification_id.in_(ids),
            PushDelivery.purpose == NOTIFY,
            PushDelivery.kind != "email",
            PushDelivery.state == "pending",
        )
        .values(state="skipped", reason="read", finished_at=now)
    )
    sent = session.scalars(
        select(PushDelivery).where(
            PushDelivery.notification_id.in_(ids),
            PushDelivery.purpose == NOTIFY,
            # in flight counts: it is most likely at the push service already
            PushDelivery.state.in_(("sending", "sent")),
            PushDelivery.kind.in_(RETRACTABLE),
        )
    ).all()
    seen: set[tuple[str, str]] = set()
    for d in sent:
        key = (d.target, f"retract:{d.notification_id}")
        if key in seen:
            continue
        seen.add(key)
        row = PushDelivery(
            id=new_id(),
            user_id=d.user_id,
            target=d.target,
            kind=d.kind,
            purpose=RETRACT,
            collapse_key=key[1],
            notification_id=d.notification_id,
            conversation_id=d.conversation_id,
            message_id=d.message_id,
            due_at=now,
            expires_at=d.expires_at,
        )
        session.add(row)
        outbox.add(session, DELIVER_TASK, [row.id], ref_id=row.id)


# --- right before sending ----------------------------------------------------------------------


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
        message = _retract_push(row, now)
    elif row.kind == "email":
        if is_online(svc.redis, row.user_id):
            _finish(row, "skipped", now, "online")
            return Prepared()
        sub = session.get(PushSubscription, row.target)
        assert sub is not None
        built = _digest(svc, session, row.user_id, sub.digest_watermark, now)
        if built is None:
            _finish(row, "skipped", now, "nothing unread")
            return Prepared()
        message, watermark = built
    else:
        message, why = _notify_push(svc, session, row, now)
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


def preview_mode(svc: Services, session: Session, user_id: str) -> str:
    mode: str = subscriptions.preferences(session, svc.settings, user_id)["effective_preview"]
    return mode


def _participant(session: Session, cid: str, user_id: str) -> Participant | None:
    return session.get(Participant, (cid, user_id))


def _notify_push(
    svc: Services, session: Session, row: PushDelivery, now: datetime
) -> tuple[Push | None, str]:
    note = session.get(Notification, row.notification_id) if row.notification_id else None
    if note is None or note.read_at is not None:
        return None, "read"
    msg = session.get(Message, row.message_id) if row.message_id else None
    if msg is None:
        return None, "deleted"
    part = _participant(session, msg.conversation_id, row.user_id)
    why = skip_reason(part, msg, lambda: message_text(svc, msg, privileged=True), now)
    if why is not None:
        return None, why
    if is_online(svc.redis, row.user_id):
        return None, "online"
    mode = preview_mode(svc, session, row.user_id)
    data: dict[str, Any] = {
        "notification_id": note.id,
        "conversation_id": msg.conversation_id,
        "message_id": msg.id,
        "seq": msg.seq,
        "count": note.count,
        "summary": _summary(note.count),
        "preview": mode,
    }
    if mode in ("sender", "full"):
        sender = session.get(User, msg.sender_id) if msg.sender_id else None
        data["sender_id"] = msg.sender_id
        data["sender_name"] = sender.name if sender is not None else None
    if mode == "full":
        conv = session.get(Conversation, msg.conversation_id)
        data["conversation_subject"] = conv.subject if conv is not None else None
        data["text"] = _short(message_text(svc, msg, privileged=False))
    event = _envelope("notification", row, now, data)
    ttl = int((row.expires_at - now).total_seconds())
    return Push(event, topic(row.user_id, row.conversation_id), ttl), ""


def _retract_push(row: PushDelivery, now: datetime) -> Push:
    data = {
        "notification_id": row.notification_id,
        "conversation_id": row.conversation_id,
        "message_id": row.message_id,
    }
    ttl = max(0, int((row.expires_at - now).total_seconds()))
    event = _envelope("notification.read", row, now, data)
    return Push(event, topic(row.user_id, row.conversation_id), ttl)


def _envelope(etype: str, row: PushDelivery, now: datetime, data: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": etype,
        "id": row.id,
        "timestamp": iso(now),
        "user_id": row.user_id,
        "data": data,
    }


def _summary(count: int) -> str:
    return "1 new message" if count == 1 else f"{count} new messages"


def _short(text: str | None) -> str | None:
    if text is not None and len(text) > PREVIEW_CHARS:
        return text[: PREVIEW_CHARS - 1] + "…"
    return text


def _digest(
    svc: Services,
    session: Session,
    user_id: str,
    watermark: datetime | None,
    now: datetime,
) -> tuple[Digest, datetime] | None:
    """The user's unread conversations with news since the last digest, one line each."""
    stmt = (
        select(Notification, Message)
        .join(Message, Message.id == Notification.message_id)
        .where(
            Notification.user_id == user_id,
            Notification.kind == "message",
            Notification.read_at.is_(None),
        )
        .order_by(Message.created_at.desc())
        .limit(DIGEST_MAX_CONVERSATIONS)
    )
    if watermark is not None:
        stmt = stmt.where(Message.created_at > watermark)
    mode = preview_mode(svc, session, user_id)
    lines: list[str] = []
    total = 0
    newest: datetime | None = None
    for note, msg in session.execute(stmt).tuples():
        part = _participant(session, msg.conversation_id, user_id)
        if skip_reason(part, msg, partial(message_text, svc, msg, privileged=True), now):
            continue
        total += note.count
        newest = max(newest, msg.created_at) if newest else msg.created_at
        line = f"- {_summary(note.count)} in conversation {msg.conversation_id}"
        if mode in ("sender", "full"):
            sender = session.get(User, msg.sender_id) if msg.sender_id else None
            who = (sender.name or sender.id) if sender is not None else "the platform"
            line += f", latest from {who}"
        if mode == "full":
            conv = session.get(Conversation, msg.conversation_id)
            if conv is not None and conv.subject:
                line += f' ("{conv.subject}")'
            text = _short(message_text(svc, msg, privileged=False))
            if text:
                line += f":\n    {text}"
        lines.append(line)
    if not lines or newest is None:
        return None
    convs = len(lines)
    subject = f"{_summary(total).replace('new', 'unread')} in {convs} conversation" + (
        "s" if convs != 1 else ""
    )
    body = "You have unread messages:\n\n" + "\n".join(lines) + "\n\nOpen the app to read them.\n"
    return Digest(subject, body), newest


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
