"""The blind search index (issue #15): keyed hashes of message terms, never the terms."""

from __future__ import annotations

from sqlalchemy import BigInteger, ForeignKeyConstraint, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base


class SearchToken(Base):
    """One term (or prefix) of one message, as a 64-bit HMAC under its conversation's key.

    The message is referenced by (conversation_id, seq), which is unique in `messages` and
    narrower than its id; the foreign key cascades, so purging, erasing or deleting a message or
    its conversation removes its tokens. On SQLite the table is WITHOUT ROWID: its primary key
    is the table, so the only other structure is the token index (docs/search.md).
    """

    __tablename__ = "search_tokens"
    __table_args__ = (
        ForeignKeyConstraint(
            ["conversation_id", "seq"],
            ["messages.conversation_id", "messages.seq"],
            ondelete="CASCADE",
        ),
        Index("ix_search_tokens_token", "token"),
        {"sqlite_with_rowid": False},
    )

    conversation_id: Mapped[str] = mapped_column(String(26), primary_key=True)
    seq: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    token: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
