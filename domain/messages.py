"""Messages: posting (durable, idempotent, gap-free seq), reading, editing and deleting.

What members do to a message once it exists (pins, reactions, reports) and the read cursor
live in domain/message_actions.py."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, exists, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from core.ids import new_id, utcnow
from core.services import Services
from domain import events, outbox
from domain.attachments import attach_to_message, check_attachable
from domain.conversations import readable, unexpired, visible_to_reader
from domain.errors import Conflict, Forbidden, Invalid, NotFound
from domain.keys import conversation_key, edit_aad, message_aad
from domain.pagination import decode_cursor, encode_cursor
from domain.principals import Principal
from domain.search import index as search_index
from models import (
    MEDIA_TYPES,
    Attachment,
    Conversation,
    DeliveryCursor,
    Message,
    MessageEdit,
    Participant,
    User,
)

logger = logging.getLogger(__name__)

MODERATE_TASK = "tasks.moderate.moderate_message"
MODERATE_BATCH_TASK = "tasks.moderate.moderate_messages"  # a group-commit batch (domain/ingest.py)
PASSED = ("allow", "mask")  # verdicts that let a message reach its recipients


def post(
    svc: Services, session: Session, who: Principal, cid: str, body: Mapping[str, Any]
) -> tuple[Message, bool]:
    """Persist a message and its outbox row in one ORM transaction. Returns (message, created).

    The path of messages with attachments (claimed with the message); the others are posted
    in batches with whatever else the process is posting (domain/ingest.py, same rules)."""
    conv, part = readable(session, who, cid)
    mtype = body.get("type", "text")
    sender = who.user_id
    check_poster(who, mtype, part.role if part is not None else None)
    if not who.is_service:
        _check_sender_standing(session, sender)
    if conv.status != "active":
        raise Conflict(f"the conversation is {conv.status}; reopen it to post")
    text = body.get("text")
    _check_content(svc, mtype, text, body)
    cmid = body.get("client_msg_id")
    if cmid and sender is not None:
        existing = session.scalar(
            select(Message).where(Message.sender_id == sender, Message.client_msg_id == cmid)
        )
        if existing is not None:
            return _same_request(existing, conv.id), False
    reply_to = body.get("reply_to")
    if reply_to is not None:
        target = session.get(Message, reply_to)
        if target is None or target.conversation_id != cid:
            raise Invalid(
                "reply_to must be a message of this conversation", {"reply_to": ["unknown message"]}
            )
    attachments = check_attachable(svc, session, who, cid, mtype, body.get("attachments") or [])

    seq = session.execute(
        update(Conversation)
        .where(Conversation.id == cid)
        .values(last_seq=Conversation.last_seq + 1, last_activity_at=utcnow())
        .returning(Conversation.last_seq)
    ).scalar_one()
    mid = new_id()
    dk = conversation_key(svc, session, conv)
    msg = Message(
        id=mid,
        conversation_id=cid,
        seq=seq,
        sender_id=sender,
        client_msg_id=cmid,
        type=mtype,
        text_ct=svc.keyring.seal_text(dk, text, message_aad(mid)) if text is not None else None,
        key_id=dk if text is not None else None,
        reply_to_id=reply_to,
        meta=body.get("metadata") or {},
        state="pending",
    )
    session.add(msg)
    outbox.add(session, MODERATE_TASK, [mid, cid], ref_id=mid)
    try:
        session.flush()
    except IntegrityError:
        session.rollback()  # a concurrent request with the same client_msg_id won
        existing = session.scalar(
            select(Message).where(Message.sender_id == sender, Message.client_msg_id == cmid)
        )
        if existing is None:
            raise
        return existing, False
    attach_to_message(session, attachments, mid)
    logger.info("message accepted", extra={"message_id": mid, "conversation_id": cid, "seq": seq})
    return msg, True


def _same_request(existing: Message, cid: str) -> Message:
    if existing.conversation_id != cid:
        raise Conflict("client_msg_id was already used for a message in another conversation")
    return existing


def check_poster(who: Principal, mtype: str, role: str | None) -> None:
    """Who may post what: API keys post system messages only, members (not observers) the
    rest. `role` is the caller's current role in the conversation, None if not a member."""
    if who.is_service:
        if mtype != "system":
            raise Invalid("an API key posts system messages only", {"type": ["must be system"]})
    else:
        if mtype == "system":
            raise Forbidden("system messages are posted with an API key")
        if role is None or role == "observer":
            raise Forbidden("observers and non-members cannot post in this conversation")


def check_standing(banned_at: datetime | None, muted_until: datetime | None) -> None:
    """A banned user posts nothing; a muted one nothing until the mute ends."""
    if banned_at is not None:
        raise Forbidden("this user is banned from posting")
    if muted_until is not None and muted_until > utcnow():
        raise Forbidden(f"this user is muted until {muted_until.isoformat()}")


def _check_sender_standing(session: Session, user_id: str | None) -> None:
    user = session.get(User, user_id) if user_id else None
    if user is not None:
        check_standing(user.banned_at, user.muted_until)


def _check_content(svc: Services, mtype: str, text: str | None, body: Mapping[str, Any]) -> None:
    limit = svc.settings.max_text_length
    if text is not None and len(text) > limit:
        raise Invalid(
            f"text is longer than {limit} characters", {"text": [f"longer than {limit} characters"]}
        )
    if mtype in ("text", "system") and (text is None or not text.strip()):
        raise Invalid(f"a {mtype} message needs non-empty text", {"text": ["required"]})
    if mtype in MEDIA_TYPES and not body.get("attachments"):
        raise Invalid(
            f"a {mtype} message carries at least one attachment", {"attachments": ["required"]}
        )
    if body.get("attachments") and mtype not in MEDIA_TYPES:
        raise Invalid(
            "attachments go in image, file, audio or video messages",
            {
                "attachments": [f"a {mtype} message takes no attachments"],
                "type": ["image, file, audio or video to carry attachments"],
            },
        )
    if mtype == "location":
        meta = body.get("metadata") or {}
        lat, lng = meta.get("lat"), meta.get("lng")
        if not (
            isinstance(lat, int | float)
            and isinstance(lng, int | float)
            and -90 <= lat <= 90
            and -180 <= lng <= 180
        ):
            raise Invalid(
                "a location message needs metadata.lat and metadata.lng",
                {"metadata": ["lat in [-90, 90] and lng in [-180, 180] are required"]},
            )


# --- reading --------------------------------------------------------------------------------


def can_see(msg: Message, who: Principal, part: Participant | None) -> bool:
    """Whether `who` may open this one message. A member may as soon as its verdict lets it
    through: the verdict commits before the fan-out appends `message.new`, and the fan-out
    commits `delivered` only after, so a client fetching what its socket just announced must
    not get a 404 in between. (Listings still wait for `delivered`, which keeps them in
    order.)"""
    if msg.expired_at is not None:  # hidden by retention: gone for everyone
        return False
    if msg.state == "delivered" or who.is_moderator:
        return True
    if part is not None and msg.state == "pending" and msg.moderation_action in PASSED:
        return True
    if part is not None and part.role == "moderator":
        return True
    return msg.sender_id is not None and msg.sender_id == who.user_id


def get_visible(
    session: Session, who: Principal, mid: str
) -> tuple[Message, Conversation, Participant | None]:
    msg = session.get(Message, mid)
    if msg is None:
        raise NotFound(f"message {mid} does not exist")
    conv, part = readable(session, who, msg.conversation_id)
    if not can_see(msg, who, part):
        raise NotFound(f"message {mid} does not exist")
    return msg, conv, part


def list_page(
    session: Session,
    who: Principal,
    cid: str,
    *,
    after_seq: int | None,
    before_seq: int | None,
    cursor: str | None,
    limit: int,
    query: Mapping[str, Any] | None = None,
) -> tuple[Conversation, Participant | None, list[Message], str | None]:
    conv, part = readable(session, who, cid)
    if cursor:
        direction, bound = decode_cursor(cursor, {"d": str, "s": int})
        if direction == "a":
            after_seq, before_seq = bound, None
        else:
            after_seq, before_seq = None, bound
    stmt = select(Message).where(Message.conversation_id == cid, unexpired())
    if not who.is_moderator and (part is None or part.role != "moderator"):
        stmt = stmt.where(visible_to_reader(who.user_id or ""))
    if query:
        stmt = _apply_filters(stmt, query)
    backwards = before_seq is not None and after_seq is None
    if after_seq is not None:
        stmt = stmt.where(Message.seq > after_seq)
    if before_seq is not None:
        stmt = stmt.where(Message.seq < before_seq)
    order = Message.seq.desc() if backwards else Message.seq.asc()
    rows = list(session.scalars(stmt.order_by(order).limit(limit + 1)))
    more = len(rows) > limit
    rows = rows[:limit]
    if backwards:
        rows.reverse()
    next_cursor = None
    if more and rows:
        next_cursor = (
            encode_cursor({"d": "b", "s": rows[0].seq})
            if backwards
            else encode_cursor({"d": "a", "s": rows[-1].seq})
        )
    if part is not None and rows:
        top = max(m.seq for m in rows if m.state == "delivered" or m.sender_id == who.user_id)
        if top > part.delivered_seq:
            part.delivered_seq = top  # the client has now received these
    return conv, part, rows, next_cursor


def _apply_filters(stmt: Any, query: Mapping[str, Any]) -> Any:
    if query.get("sender_id"):
        stmt = stmt.where(Message.sender_id == query["sender_id"])
    if query.get("since"):
        stmt = stmt.where(Message.created_at >= query["since"])
    if query.get("until"):
        stmt = stmt.where(Message.created_at < query["until"])
    if query.get("pinned"):
        stmt = stmt.where(Message.pinned_at.is_not(None))
    if query.get("has_attachments") is not None:
        carries = exists().where(Attachment.message_id == Message.id)
        stmt = stmt.where(carries if query["has_attachments"] else ~carries)
    return stmt


# --- changes ----------------------------------------------------------------------------------


def settle(session: Session, msg: Message) -> None:
    """Before changing a message whose verdict passed but whose fan-out has not committed:
    wait for a fan-out in flight, then read its state again. The fan-out holds the
    conversation's `delivery_cursors` row from its walk to its commit, and appends
    `message.new` in between, so once this transaction holds that row the state is the truth:
    `delivered` (recipients were told, so they are told of the change) or still `pending`
    (no fan-out has reached it; the next one, waiting on this transaction, renders the message
    as changed). Taken before any write, in the fan-out's own order (the cursor, then the
    message row). On SQLite, BEGIN IMMEDIATE already ordered the two transactions."""
    if msg.state == "pending" and msg.moderation_action in PASSED:
        session.execute(
            select(DeliveryCursor.conversation_id)
            .where(DeliveryCursor.conversation_id == msg.conversation_id)
            .with_for_update()
        )
        session.refresh(msg)


def _own_editable(session: Session, who: Principal, mid: str) -> tuple[Message, Conversation]:
    msg, conv, _ = get_visible(session, who, mid)
    settle(session, msg)
    if msg.sender_id is None or msg.sender_id != who.user_id:
        raise Forbidden("only the sender may change a message")
    if msg.deleted_at is not None:
        raise Conflict("the message was deleted")
    return msg, conv


def edit(svc: Services, session: Session, who: Principal, mid: str, text: str) -> Message:
    """Replace the text, keeping the previous version sealed in the edit history.

    The new text is moderated here, synchronously: it is pure and fast, and the sender learns at
    once if the edit is refused instead of a delivered message silently turning into a held one.
    """
    from moderation import moderate, policy_for

    msg, conv = _own_editable(session, who, mid)
    window = svc.settings.edit_window_s
    if utcnow() - msg.created_at > timedelta(seconds=window):
        raise Conflict(f"messages can be edited for {window} seconds after sending")
    if msg.type != "text":
        raise Conflict("only text messages can be edited")
    _check_content(svc, "text", text, {})
    verdict = moderate(text, policy_for(conv.type, svc.settings.moderation_overrides))
    if verdict.action in ("hold", "reject"):
        raise Invalid(
            f"the edit was refused: {verdict.reason}",
            {"text": [verdict.reason]},
            moderation=verdict.to_dict(),
        )
    if msg.text_ct is not None:
        old_key = msg.key_id or ""
        old = svc.keyring.open_text(old_key, msg.text_ct, message_aad(mid))
        edit_row = MessageEdit(message_id=mid, replaced_at=utcnow())
        session.add(edit_row)
        dk = conversation_key(svc, session, conv)
        edit_row.text_ct = svc.keyring.seal_text(dk, old, edit_aad(mid))
        edit_row.key_id = dk
    dk = conversation_key(svc, session, conv)
    msg.text_ct = svc.keyring.seal_text(dk, text, message_aad(mid))
    msg.key_id = dk
    msg.edited_at = utcnow()
    msg.moderation_action = verdict.action
    msg.moderation_labels = list(verdict.labels)
    msg.moderation_spans = [list(s) for s in verdict.spans]
    search_index.replace(svc, session, msg.conversation_id, msg.seq, dk, text)  # same tx
    announce(session, conv, msg, "message.updated")
    return msg


def soft_delete(session: Session, who: Principal, mid: str) -> Message:
    msg, conv = _own_editable(session, who, mid)
    msg.deleted_at = utcnow()
    # The sender deleted it: the text and its earlier versions go now; the row stays as a
    # tombstone until the retention purge deletes it after the grace period.
    msg.text_ct = msg.key_id = None
    msg.moderation_spans = []
    session.execute(delete(MessageEdit).where(MessageEdit.message_id == mid))
    search_index.remove(session, msg.conversation_id, msg.seq)
    announce(session, conv, msg, "message.deleted")
    return msg


def announce(session: Session, conv: Conversation, msg: Message, etype: str) -> None:
    if msg.state != "delivered":  # recipients never saw it; tell the sender only
        users = [msg.sender_id] if msg.sender_id else []
    else:
        users = [p.user_id for p in conv.active_participants()]
    events.emit(
        session, etype, {"conversation_id": conv.id, "message_id": msg.id, "seq": msg.seq}, users
    )


def members_of(session: Session, cid: str) -> list[Participant]:
    return list(
        session.scalars(
            select(Participant).where(
                Participant.conversation_id == cid, Participant.left_at.is_(None)
            )
        )
    )
