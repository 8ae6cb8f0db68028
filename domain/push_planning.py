"""Planning offline pushes: which deliveries a notification creates (one per target, due
`PARLEY_PUSH_DELAY_S` ahead, later messages collapsing into it until it is claimed), and the
retractions once it is read. Sending them is domain/push_delivery.py."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from core.ids import new_id
from core.services import Services
from domain import outbox
from models import Message, Notification, PushDelivery, PushSubscription
from models.push import PLATFORM_TARGET

DELIVER_TASK = "tasks.push.deliver"
NOTIFY, RETRACT = "notify", "retract"
DIGEST_KEY = "digest"
RETRACTABLE = ("webpush", "webhook", "platform")


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
