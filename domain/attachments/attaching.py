"""Attaching ready uploads to a new message: which ones it may carry, and giving each once."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from core.services import Services
from domain.attachments.views import remember_for_message
from domain.errors import Conflict, Forbidden, Invalid
from domain.principals import Principal
from models import Attachment

# Which attachment kinds each media message type may carry.
MESSAGE_KINDS = {
    "image": {"image"},
    "audio": {"audio"},
    "video": {"video"},
    "file": {"image", "file", "audio", "video"},
}


def check_attachable(
    svc: Services, session: Session, who: Principal, cid: str, mtype: str, ids: Sequence[str]
) -> list[Attachment]:
    """The attachments a new message may carry: the sender's own, ready, unused, of this
    conversation, of a kind the message type takes. Locked on PostgreSQL until commit."""
    if not ids:
        return []
    if len(set(ids)) != len(ids):
        raise Invalid("an attachment is listed twice", {"attachments": ["duplicate ids"]})
    stmt = select(Attachment).where(Attachment.id.in_(list(ids)))
    if svc.dialect != "sqlite":  # SQLite's BEGIN IMMEDIATE already serializes writers
        stmt = stmt.with_for_update()
    rows = {a.id: a for a in session.scalars(stmt)}
    kinds = MESSAGE_KINDS[mtype]
    out = []
    for att_id in ids:
        att = rows.get(att_id)
        if att is None or att.conversation_id != cid:
            raise Invalid(
                f"attachment {att_id} is not an upload to this conversation",
                {"attachments": [f"unknown attachment {att_id}"]},
            )
        if att.uploader_id != who.user_id:
            raise Forbidden(f"only the uploader may attach {att_id}")
        if att.state == "processing":
            raise Conflict(
                f"attachment {att_id} is still being processed; wait for attachment.ready",
                {"attachments": [f"{att_id} is processing"]},
            )
        if att.state == "rejected":
            raise Invalid(
                f"attachment {att_id} was rejected: {att.reason}",
                {"attachments": [f"{att_id} was rejected"]},
            )
        if att.message_id is not None:
            raise Conflict(
                f"attachment {att_id} is already part of a message",
                {"attachments": [f"{att_id} is already used"]},
            )
        if att.kind not in kinds:
            raise Invalid(
                f"a {mtype} message cannot carry a {att.kind} attachment ({att.content_type})",
                {"attachments": [f"{att_id} is {att.kind}, not {' or '.join(sorted(kinds))}"]},
            )
        out.append(att)
    return out


def attach_to_message(session: Session, rows: Iterable[Attachment], message_id: str) -> None:
    """Give the attachments to the message, each once (compare-and-set on message_id).
    Rendering the new message in the same session then needs no query for them."""
    rows = sorted(rows, key=lambda a: a.id)
    ids = [a.id for a in rows]
    if ids:
        done = session.execute(
            update(Attachment)
            .where(
                Attachment.id.in_(ids),
                Attachment.message_id.is_(None),
                Attachment.state == "ready",
            )
            .values(message_id=message_id)
            .execution_options(synchronize_session="fetch")
        )
        if getattr(done, "rowcount", 0) != len(ids):
            raise Conflict(
                "an attachment was used by another message at the same time",
                {"attachments": ["already used"]},
            )
    remember_for_message(session, message_id, rows)
