"""The blind search index (issue #15): keyed hashes of message terms, never the terms.

Stored as compact posting lists (docs/search.md): a conversation's messages are cut into
segments of `SEGMENT_SEQS` seqs, and each segment's tokens into `BUCKETS` buckets by their
low bits; one row per (conversation, bucket, segment) holds that bucket's sorted tokens and,
for each, the seqs (as offsets in the segment) of the messages holding it. The layout of
`data` is domain/search/postings.py's.
"""

from __future__ import annotations

from sqlalchemy import ForeignKey, Integer, LargeBinary, SmallInteger, String
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base


class SearchConversation(Base):
    """A conversation's short reference in the index, and the row its index writers lock.

    The 26-character conversation id would otherwise be repeated in every postings row; the
    foreign key cascades, so deleting the conversation row deletes its index."""

    __tablename__ = "search_conversations"

    ref: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    conversation_id: Mapped[str] = mapped_column(
        String(26), ForeignKey("conversations.id", ondelete="CASCADE"), unique=True
    )


class SearchPostings(Base):
    """One bucket of one segment of a conversation's index (see the module docstring)."""

    __tablename__ = "search_postings"
    __table_args__ = ({"sqlite_with_rowid": False},)

    ref: Mapped[int] = mapped_column(
        Integer,
        ForeignKey("search_conversations.ref", ondelete="CASCADE"),
        primary_key=True,
        autoincrement=False,
    )
    bucket: Mapped[int] = mapped_column(SmallInteger, primary_key=True, autoincrement=False)
    segment: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    data: Mapped[bytes] = mapped_column(LargeBinary)
