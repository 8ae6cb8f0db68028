"""Attachments: uploaded files bound to a conversation, later to one message.

The bytes live in storage/ (sealed with the conversation's data key, see core/filecrypt.py);
this row holds what is needed to find, check and describe them. The filename is user content,
so it is sealed like message text.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, ForeignKey, Index, LargeBinary, String
from sqlalchemy.orm import Mapped, mapped_column

from core.ids import new_id, utcnow
from models.base import Base

ATTACHMENT_STATES = ("processing", "ready", "rejected")
ATTACHMENT_KINDS = ("image", "file", "audio", "video")


class Attachment(Base):
    __tablename__ = "attachments"
    __table_args__ = (
        Index("ix_attachments_conversation", "conversation_id", "state", "created_at"),
        Index("ix_attachments_uploader", "uploader_id", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(26), primary_key=True, default=new_id)
    conversation_id: Mapped[str] = mapped_column(ForeignKey("conversations.id", ondelete="CASCADE"))
    uploader_id: Mapped[str] = mapped_column(String(128))
    # Set once, by the message that carries it (compare-and-set: an attachment is used once).
    message_id: Mapped[str | None] = mapped_column(
        ForeignKey("messages.id", ondelete="SET NULL"), index=True
    )
    state: Mapped[str] = mapped_column(String(16), default="processing")
    kind: Mapped[str] = mapped_column(String(16))
    content_type: Mapped[str] = mapped_column(String(100))
    key_id: Mapped[str] = mapped_column(String(40))  # the conversation data key
    filename_ct: Mapped[bytes] = mapped_column(LargeBinary)
    # The upload's own spool key, sealed under key_id; cleared once the media stage is done.
    upload_key_ct: Mapped[bytes | None] = mapped_column(LargeBinary)
    size: Mapped[int] = mapped_column(default=0)  # plaintext bytes of the original
    width: Mapped[int | None]
    height: Mapped[int | None]
    # {variant: {"content_type", "size", "width"?, "height"?}} of what storage holds
    variants: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    reason: Mapped[str | None] = mapped_column(String(300))  # why it was rejected
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    processed_at: Mapped[datetime | None]
