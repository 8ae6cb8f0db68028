"""What a push says: the notification and retraction payloads, and the e-mail digest, each
rendered at the user's preview level and checked against the audience rules right before
sending. Claiming and recording attempts is domain/push_delivery.py."""

from __future__ import annotations

import base64
import hashlib
from datetime import datetime
from functools import partial
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.events import is_online
from core.ids import iso
from core.services import Services
from domain import push as subscriptions
from domain.audience import skip_reason
from domain.render import PREVIEW_CHARS, message_text
from models import Conversation, Message, Notification, Participant, PushDelivery, User
from push.base import Digest, Push

DIGEST_MAX_CONVERSATIONS = 20


def topic(user_id: str, conversation_id: str | None) -> str:
    """RFC 8030 Topic: one per user and conversation, opaque to the push service."""
    digest = hashlib.sha256(f"{user_id}:{conversation_id}".encode()).digest()
    return base64.urlsafe_b64encode(digest).decode()[:32]


def preview_mode(svc: Services, session: Session, user_id: str) -> str:
    mode: str = subscriptions.preferences(session, svc.settings, user_id)["effective_preview"]
    return mode


def participant(session: Session, cid: str, user_id: str) -> Participant | None:
    return session.get(Participant, (cid, user_id))


def notify_push(
    svc: Services, session: Session, row: PushDelivery, now: datetime
) -> tuple[Push | None, str]:
    note = session.get(Notification, row.notification_id) if row.notification_id else None
    if note is None or note.read_at is not None:
        return None, "read"
    msg = session.get(Message, row.message_id) if row.message_id else None
    if msg is None:
        return None, "deleted"
    part = participant(session, msg.conversation_id, row.user_id)
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


def retract_push(row: PushDelivery, now: datetime) -> Push:
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


def digest(
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
        part = participant(session, msg.conversation_id, user_id)
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
