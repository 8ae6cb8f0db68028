"""Deleting messages and stored files for good: the steps the purge, conversation deletion and
erasure share.

Both are idempotent, so a retry after a crash, or two purges at once, delete nothing twice:
rows are deleted by id with their condition checked again under the row lock, and deleting a
stored object that is already gone is fine.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from core.services import Services
from domain.search import index as search_index
from models import (
    Attachment,
    Message,
    MessageEdit,
    Notification,
    Reaction,
    Report,
)


def rowcount(result: Any) -> int:
    """Rows an UPDATE or DELETE changed (0 where the driver does not say)."""
    return int(getattr(result, "rowcount", 0) or 0)


def delete_messages(
    svc: Services, session: Session, ids: Sequence[str], condition: Any = None
) -> tuple[int, int]:
    """Delete messages (and everything hanging off them) by id, in the caller's transaction.

    With `condition`, only rows that still match it under the row lock go, so a message
    restored or changed meanwhile stays. Returns (messages, attachment rows) deleted."""
    if not ids:
        return 0, 0
    stmt = select(Message.id).where(Message.id.in_(list(ids)))
    if condition is not None:
        stmt = stmt.where(condition)
    if svc.dialect != "sqlite":  # SQLite's BEGIN IMMEDIATE already serializes writers
        stmt = stmt.with_for_update()
    ids = list(session.scalars(stmt))
    if not ids:
        return 0, 0
    atts = rowcount(session.execute(delete(Attachment).where(Attachment.message_id.in_(ids))))
    for child in (MessageEdit, Reaction, Report, Notification):
        session.execute(delete(child).where(child.message_id.in_(ids)))
    search_index.forget_messages(session, ids)  # postings hold seqs, not foreign keys
    return rowcount(session.execute(delete(Message).where(Message.id.in_(ids)))), atts


def delete_attachment_files(svc: Services, atts: Sequence[Attachment]) -> int:
    """Delete the stored bytes of these attachments: every variant and the upload spool.

    The hook for storage/: keys come from domain/attachments/stored.py; deleting a missing object is
    fine, so a retry or a concurrent purge is harmless. Returns how many objects were named."""
    if not atts:
        return 0
    from domain import attachments as files

    store = files.storage_for(svc)
    named = 0
    for att in atts:
        variants = {*files.VARIANTS, *(att.variants or {})}
        keys = [files.upload_key(att.id)]
        keys += [files.object_key(att.conversation_id, att.id, v) for v in sorted(variants)]
        for key in keys:
            store.delete(key)
        named += len(att.variants or {}) + (1 if att.upload_key_ct is not None else 0)
    return named
