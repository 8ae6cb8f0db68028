"""In-app notifications (who hears about a message while away: domain/audience.py).

One unread notification per user and conversation collapses a burst ("3 new messages"): its
`count` is derived from the read cursor, so re-runs and out-of-order batches agree. Every
change reaches the user's devices as a durable `notification` event (through the outbox), and
reading the conversation up to the notified message reads the notification too, so badges
clear everywhere and pushes already sent are retracted where the provider allows.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core.ids import iso, utcnow
from domain import events, push_planning
from domain.conversations import unread_counts
from domain.errors import NotFound
from domain.pagination import decode_cursor, encode_cursor
from models import Message, Notification

logger = logging.getLogger(__name__)

EVENT = "notification"


# --- recording -------------------------------------------------------------------------------


def record(session: Session, msg: Message, users: Sequence[str]) -> list[Notification]:
    """Upsert each user's unread notification for `msg`'s conversation; emit the change.

    The unread rows are locked (PostgreSQL; SQLite serializes writers anyway), in user order:
    two tasks of one conversation then compare with what the other committed, so the newest
    message wins rather than the last writer. Two first inserts collide on the unique index
    instead, and the loser's task runs again (tasks/push.py)."""
    if not users:
        return []
    cid = msg.conversation_id
    unread = {
        n.user_id: n
        for n in session.scalars(
            select(Notification)
            .where(
                Notification.user_id.in_(users),
                Notification.kind == "message",
                Notification.conversation_id == cid,
                Notification.read_at.is_(None),
            )
            .order_by(Notification.user_id)
            .with_for_update()
        )
    }
    changed: list[Notification] = []
    for uid in users:
        count = max(1, unread_counts(session, uid, [cid]).get(cid, 0))
        note = unread.get(uid)
        if note is None:
            note = Notification(
                user_id=uid, kind="message", message_id=msg.id, conversation_id=cid, count=count
            )
            session.add(note)
        elif (note.message_id or "") < msg.id:
            note.message_id, note.count = msg.id, count
        else:
            continue  # a re-run, or an older batch arriving late: nothing new to announce
        changed.append(note)
    session.flush()
    for note in changed:
        _emit(session, note, msg.seq, msg.sender_id)
    return changed


def _emit(session: Session, note: Notification, seq: int | None, sender: str | None) -> None:
    events.emit(session, EVENT, render(note, seq=seq, sender_id=sender), [note.user_id])


def render(
    note: Notification, *, seq: int | None = None, sender_id: str | None = None
) -> dict[str, Any]:
    return {
        "id": note.id,
        "kind": note.kind,
        "conversation_id": note.conversation_id,
        "message_id": note.message_id,
        "seq": seq,
        "sender_id": sender_id,
        "count": note.count,
        "created_at": iso(note.created_at),
        "read": note.read_at is not None,
        "read_at": iso(note.read_at),
    }


# --- reading ---------------------------------------------------------------------------------


def list_page(
    session: Session, user_id: str, *, unread_only: bool, cursor: str | None, limit: int
) -> tuple[list[dict[str, Any]], str | None, int]:
    """Newest first (ids are ULIDs, so by creation). Returns (items, next cursor, unread)."""
    stmt = select(Notification).where(Notification.user_id == user_id)
    if unread_only:
        stmt = stmt.where(Notification.read_at.is_(None))
    if cursor:
        (before,) = decode_cursor(cursor, ("b",))
        stmt = stmt.where(Notification.id < str(before))
    rows = list(session.scalars(stmt.order_by(Notification.id.desc()).limit(limit + 1)))
    more = len(rows) > limit
    rows = rows[:limit]
    msgs = {
        m.id: m
        for m in session.scalars(
            select(Message).where(Message.id.in_([n.message_id for n in rows if n.message_id]))
        )
    }
    items = []
    for n in rows:
        m = msgs.get(n.message_id or "")
        items.append(render(n, seq=m.seq if m else None, sender_id=m.sender_id if m else None))
    unread = session.scalar(
        select(func.count())
        .select_from(Notification)
        .where(Notification.user_id == user_id, Notification.read_at.is_(None))
    )
    next_cursor = encode_cursor({"b": rows[-1].id}) if more and rows else None
    return items, next_cursor, int(unread or 0)


def mark_read(session: Session, user_id: str, notification_id: str) -> Notification:
    note = session.get(Notification, notification_id)
    if note is None or note.user_id != user_id:
        raise NotFound(f"notification {notification_id} does not exist")
    if note.read_at is None:
        _read(session, [note])
    return note


def mark_all_read(session: Session, user_id: str, conversation_id: str | None = None) -> int:
    stmt = select(Notification).where(
        Notification.user_id == user_id, Notification.read_at.is_(None)
    )
    if conversation_id is not None:
        stmt = stmt.where(Notification.conversation_id == conversation_id)
    notes = list(session.scalars(stmt))
    _read(session, notes)
    return len(notes)


def on_conversation_read(session: Session, user_id: str, conversation_id: str, seq: int) -> int:
    """The read cursor moved to `seq`: read the message notifications it now covers."""
    notes = list(
        session.scalars(
            select(Notification)
            .join(Message, Message.id == Notification.message_id)
            .where(
                Notification.user_id == user_id,
                Notification.conversation_id == conversation_id,
                Notification.kind == "message",
                Notification.read_at.is_(None),
                Message.seq <= seq,
            )
        )
    )
    _read(session, notes)
    return len(notes)


def _read(session: Session, notes: Iterable[Notification]) -> None:
    notes = list(notes)
    if not notes:
        return
    now = utcnow()
    for note in notes:
        note.read_at = now
        _emit(session, note, None, None)
    push_planning.retract(session, notes)
