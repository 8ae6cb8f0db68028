"""Messages and what hangs off them. Text is only ever stored sealed (see core/crypto.py)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, ForeignKey, Index, LargeBinary, String, Text, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column

from core.ids import new_id, utcnow
from models.base import Base

MESSAGE_TYPES = ("text", "image", "file", "audio", "video", "location", "system")
MESSAGE_STATES = ("pending", "delivered", "held", "rejected")
MEDIA_TYPES = frozenset({"image", "file", "audio", "video"})  # the only types with attachments


class Message(Base):
    __tablename__ = "messages"
    __table_args__ = (
        UniqueConstraint("conversation_id", "seq"),
        UniqueConstraint("sender_id", "client_msg_id"),
        Index("ix_messages_state_created", "state", "created_at"),
        Index("ix_messages_sender_created", "sender_id", "created_at"),
        # The purge finds rows past their grace period through these (docs/retention.md).
        Index(
            "ix_messages_expired",
            "expired_at",
            sqlite_where=text("expired_at IS NOT NULL"),
            postgresql_where=text("expired_at IS NOT NULL"),
        ),
        Index(
            "ix_messages_deleted",
            "deleted_at",
            sqlite_where=text("deleted_at IS NOT NULL"),
            postgresql_where=text("deleted_at IS NOT NULL"),
        ),
    )

    id: Mapped[str] = mapped_column(String(26), primary_key=True, default=new_id)
    conversation_id: Mapped[str] = mapped_column(ForeignKey("conversations.id", ondelete="CASCADE"))
    seq: Mapped[int]
    sender_id: Mapped[str | None] = mapped_column(String(128))  # NULL: system message
    client_msg_id: Mapped[str | None] = mapped_column(String(128))
    type: Mapped[str] = mapped_column(String(16), default="text")
    text_ct: Mapped[bytes | None] = mapped_column(LargeBinary)
    key_id: Mapped[str | None] = mapped_column(String(40))
    reply_to_id: Mapped[str | None] = mapped_column(String(26))
    state: Mapped[str] = mapped_column(String(16), default="pending")
    moderation_action: Mapped[str | None] = mapped_column(String(16))
    moderation_labels: Mapped[list[str]] = mapped_column(JSON, default=list)
    # [start, end, label] offsets into the plaintext; masking is applied on read.
    moderation_spans: Mapped[list[list[Any]]] = mapped_column(JSON, default=list)
    moderation_reason: Mapped[str | None] = mapped_column(String(300))
    edited_at: Mapped[datetime | None]
    deleted_at: Mapped[datetime | None]
    # Hidden by retention (phase 1 of the purge); the row is deleted after the grace period.
    expired_at: Mapped[datetime | None]
    pinned_at: Mapped[datetime | None]
    pinned_by: Mapped[str | None] = mapped_column(String(128))
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class MessageEdit(Base):
    """A previous version of an edited message, sealed like the message itself."""

    __tablename__ = "message_edits"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    message_id: Mapped[str] = mapped_column(
        ForeignKey("messages.id", ondelete="CASCADE"), index=True
    )
    text_ct: Mapped[bytes | None] = mapped_column(LargeBinary)
    key_id: Mapped[str | None] = mapped_column(String(40))
    replaced_at: Mapped[datetime] = mapped_column(default=utcnow)


class Reaction(Base):
    __tablename__ = "reactions"

    message_id: Mapped[str] = mapped_column(
        ForeignKey("messages.id", ondelete="CASCADE"), primary_key=True
    )
    user_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    emoji: Mapped[str] = mapped_column(String(32), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Report(Base):
    __tablename__ = "reports"
    __table_args__ = (UniqueConstraint("message_id", "reporter_id"),)

    id: Mapped[str] = mapped_column(String(26), primary_key=True, default=new_id)
    message_id: Mapped[str] = mapped_column(
        ForeignKey("messages.id", ondelete="CASCADE"), index=True
    )
    reporter_id: Mapped[str] = mapped_column(String(128))
    reason: Mapped[str] = mapped_column(String(32))
    note: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    resolved_at: Mapped[datetime | None]
