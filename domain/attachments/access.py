"""Who may see an attachment, and a conversation's shared media as the caller may see it."""

from __future__ import annotations

from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session

from domain.conversations import membership, readable, unexpired
from domain.errors import Invalid, NotFound
from domain.pagination import decode_cursor, encode_cursor
from domain.principals import Principal
from models import Attachment, Message, Participant


def visible(session: Session, user_id: str | None, att_id: str) -> tuple[Attachment, Participant]:
    """The attachment if `user_id` may see it: a current participant who uploaded it, or who
    can see the undeleted message carrying it. Anything else is 404, existence included."""
    from domain.messages import can_see

    missing = NotFound(f"attachment {att_id} does not exist or you cannot see it")
    att = session.get(Attachment, att_id)
    if att is None or user_id is None:
        raise missing
    part = membership(session, att.conversation_id, user_id)
    if part is None:
        raise missing
    if att.uploader_id == user_id:
        return att, part
    msg = session.get(Message, att.message_id) if att.message_id else None
    if msg is None or msg.deleted_at is not None:
        raise missing
    if not can_see(msg, Principal(user_id=user_id), part):
        raise missing
    return att, part


def list_page(
    session: Session, who: Principal, cid: str, *, kind: str | None, cursor: str | None, limit: int
) -> tuple[list[tuple[Attachment, int]], str | None]:
    """A conversation's shared media, newest message first: ready attachments of undeleted
    messages the caller can see. Participants only."""
    user = who.require_user()
    _, part = readable(session, who, cid)
    if part is None:
        raise NotFound(f"conversation {cid} does not exist or you are not a participant")
    stmt = (
        select(Attachment, Message.seq)
        .join(Message, Message.id == Attachment.message_id)
        .where(
            Attachment.conversation_id == cid,
            Attachment.state == "ready",
            Message.deleted_at.is_(None),
            unexpired(),
        )
    )
    if part.role != "moderator":
        stmt = stmt.where(or_(Message.state == "delivered", Message.sender_id == user))
    if kind:
        stmt = stmt.where(Attachment.kind == kind)
    if cursor:
        seq, last_id = decode_cursor(cursor, ("s", "id"))
        if not isinstance(seq, int) or isinstance(seq, bool) or not isinstance(last_id, str):
            raise Invalid(
                "the cursor is not valid; start again without it", {"cursor": ["invalid"]}
            )
        stmt = stmt.where(or_(Message.seq < seq, and_(Message.seq == seq, Attachment.id < last_id)))
    rows = [
        (a, s)
        for a, s in session.execute(
            stmt.order_by(Message.seq.desc(), Attachment.id.desc()).limit(limit + 1)
        )
    ]
    next_cursor = None
    if len(rows) > limit:
        rows = rows[:limit]
        next_cursor = encode_cursor({"s": rows[-1][1], "id": rows[-1][0].id})
    return rows, next_cursor
