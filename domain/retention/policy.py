"""Retention policies: how long a conversation keeps its messages.

A conversation keeps messages for its own `retention_s` if set (0 = forever), else for
`PARLEY_RETENTION_DAYS` (unset = forever). Overrides are in seconds so that tests and
short-lived support chats can use policies in seconds.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import update
from sqlalchemy.orm import Session

from core.config import Settings
from core.ids import utcnow
from domain import audit, events
from domain.conversations import MANAGER_ROLES, readable
from domain.errors import Forbidden
from domain.principals import Principal
from domain.retention.deleting import rowcount
from models import Conversation, Message


def global_seconds(settings: Settings) -> int | None:
    """The default retention in seconds, or None to keep forever."""
    return round(settings.retention_days * 86400) if settings.retention_days > 0 else None


def effective_seconds(settings: Settings, conv: Conversation) -> int | None:
    """How long `conv` keeps messages, in seconds; None keeps them forever."""
    if conv.retention_s is None:
        return global_seconds(settings)
    return conv.retention_s or None


def policy_view(settings: Settings, conv: Conversation) -> dict[str, Any]:
    return {
        "conversation_id": conv.id,
        "retention_seconds": conv.retention_s,
        "inherited": conv.retention_s is None,
        "effective_seconds": effective_seconds(settings, conv),
        "grace_seconds": round(settings.retention_grace_s),
    }


def get_policy(session: Session, who: Principal, cid: str) -> Conversation:
    conv, _ = readable(session, who, cid)
    return conv


def set_policy(
    settings: Settings, session: Session, who: Principal, cid: str, seconds: int | None
) -> Conversation:
    """Set (or, with None, clear) a conversation's retention override.

    Owners and admins of the conversation, platform moderators and API keys may. Messages it
    hid and whose grace period is not over come back if the new policy keeps them.
    """
    conv, part = readable(session, who, cid)
    if not who.is_moderator and (part is None or part.role not in MANAGER_ROLES):
        raise Forbidden(
            "only the conversation's owners or admins, moderators or an API key may set retention"
        )
    if conv.retention_s == seconds:
        return conv
    before = conv.retention_s
    conv.retention_s = seconds
    now = utcnow()
    keep = effective_seconds(settings, conv)
    restore = update(Message).where(
        Message.conversation_id == cid,
        Message.expired_at >= now - timedelta(seconds=settings.retention_grace_s),
    )
    if keep is not None:
        restore = restore.where(Message.created_at >= now - timedelta(seconds=keep))
    restored = rowcount(session.execute(restore.values(expired_at=None)))
    audit.record(
        session,
        who,
        "conversation.retention",
        "conversation",
        cid,
        detail={"from": before, "to": seconds, "restored": restored},
    )
    members = [p.user_id for p in conv.active_participants()]
    events.emit(
        session, "conversation.updated", {"conversation_id": cid, "change": "retention"}, members
    )
    return conv
