"""Users, conversations and their participants."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, ForeignKey, Index, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from core.ids import new_id, utcnow
from models.base import Base

CONVERSATION_TYPES = ("direct", "group", "support")
CONVERSATION_STATUSES = ("active", "archived", "closed")
PARTICIPANT_ROLES = ("owner", "admin", "moderator", "member", "observer")
NOTIFICATION_LEVELS = ("all", "mentions", "none")


class User(Base):
    """A platform user, known from their first valid token or from an API call naming them."""

    __tablename__ = "users"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    name: Mapped[str | None] = mapped_column(String(200))
    avatar_url: Mapped[str | None] = mapped_column(String(1000))
    roles: Mapped[list[str]] = mapped_column(JSON, default=list)
    muted_until: Mapped[datetime | None]
    banned_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Conversation(Base):
    __tablename__ = "conversations"
    __table_args__ = (
        Index("ix_conversations_context", "context_type", "context_id"),
        UniqueConstraint("dedupe_key"),
    )

    id: Mapped[str] = mapped_column(String(26), primary_key=True, default=new_id)
    type: Mapped[str] = mapped_column(String(16))
    subject: Mapped[str | None] = mapped_column(String(200))
    context_type: Mapped[str | None] = mapped_column(String(64))
    context_id: Mapped[str | None] = mapped_column(String(128))
    status: Mapped[str] = mapped_column(String(16), default="active")
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSON, default=dict)
    # Hash of (type, context, members) for get-or-create; NULL for free-form groups.
    dedupe_key: Mapped[str | None] = mapped_column(String(64))
    data_key_id: Mapped[str | None] = mapped_column(String(40))
    last_seq: Mapped[int] = mapped_column(default=0)
    last_activity_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    created_by: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Retention override in seconds (docs/retention.md): NULL inherits PARLEY_RETENTION_DAYS,
    # 0 keeps messages forever.
    retention_s: Mapped[int | None]
    # Deleted: keys shredded at once, rows purged by a job; reads answer 404 from then on.
    deleted_at: Mapped[datetime | None]

    participants: Mapped[list[Participant]] = relationship(
        back_populates="conversation", order_by="Participant.joined_at"
    )

    def active_participants(self) -> list[Participant]:
        """All current members: loaded on first use (a membership check needs one row only)."""
        return [p for p in self.participants if p.left_at is None]


class Participant(Base):
    __tablename__ = "participants"
    __table_args__ = (Index("ix_participants_user", "user_id", "left_at"),)

    conversation_id: Mapped[str] = mapped_column(
        ForeignKey("conversations.id", ondelete="CASCADE"), primary_key=True
    )
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id"), primary_key=True)
    role: Mapped[str] = mapped_column(String(16), default="member")
    joined_at: Mapped[datetime] = mapped_column(default=utcnow)
    left_at: Mapped[datetime | None]
    # Cursors, not per-message rows: unread = visible messages with seq > read_seq.
    read_seq: Mapped[int] = mapped_column(default=0)
    delivered_seq: Mapped[int] = mapped_column(default=0)
    muted_until: Mapped[datetime | None]
    notification_level: Mapped[str] = mapped_column(String(16), default="all")
    archived: Mapped[bool] = mapped_column(default=False)

    conversation: Mapped[Conversation] = relationship(back_populates="participants")


class DeliveryCursor(Base):
    """How far a conversation's messages have been fanned out, in seq order, and the newest
    message it delivered (the conversation list's preview).

    Kept apart from `conversations` so the fan-out lock never contends with posting: a POST
    reserves its seq on the conversation's row, the fan-out writes only this one. The
    preview's id may name a message deleted since (purged, erased); readers join it to
    `messages`, so there is then no preview until the next delivery.
    """

    __tablename__ = "delivery_cursors"

    conversation_id: Mapped[str] = mapped_column(
        ForeignKey("conversations.id", ondelete="CASCADE"), primary_key=True
    )
    fanout_seq: Mapped[int] = mapped_column(default=0)
    last_message_id: Mapped[str | None] = mapped_column(String(26))
