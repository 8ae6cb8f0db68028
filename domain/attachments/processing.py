"""The media stage's outcome: processing → ready | rejected, once, announced to the uploader."""

from __future__ import annotations

from typing import Any

from sqlalchemy import update
from sqlalchemy.orm import Session

from core.ids import utcnow
from domain import events, outbox
from models import Attachment

MEDIA_TASK = "tasks.media.process_attachment"
READY_EVENT = "attachment.ready"


def finish(
    session: Session,
    att: Attachment,
    *,
    state: str,
    variants: dict[str, Any] | None = None,
    size: int | None = None,
    width: int | None = None,
    height: int | None = None,
    reason: str | None = None,
) -> bool:
    """processing → ready | rejected, once (compare-and-set), announced to the uploader.

    Returns False when another run got there first (then nothing changes)."""
    values: dict[str, Any] = {
        "state": state,
        "upload_key_ct": None,
        "processed_at": utcnow(),
        "reason": reason[:300] if reason else None,
    }
    if state == "ready":
        values.update(variants=variants or {}, size=size, width=width, height=height)
    done = session.execute(
        update(Attachment)
        .where(Attachment.id == att.id, Attachment.state == "processing")
        .values(**values)
    )
    outbox.mark_done(session, [att.id], MEDIA_TASK)
    if not getattr(done, "rowcount", 0):
        return False
    data: dict[str, Any] = {
        "attachment_id": att.id,
        "conversation_id": att.conversation_id,
        "state": state,
    }
    if reason:
        data["reason"] = reason[:300]
    events.emit(session, READY_EVENT, data, [att.uploader_id])
    return True


def mark_media_done(session: Session, att_id: str) -> None:
    outbox.mark_done(session, [att_id], MEDIA_TASK)
