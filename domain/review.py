"""The moderators' side: the review queue, verdicts on messages, mutes and bans, the audit log.

Moderators are platform-wide (a `moderator`/`admin` role claim, or an API key). Every action
here is written to the audit log in the same transaction as the change it records.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from sqlalchemy import and_, exists, func, or_, select, update
from sqlalchemy.orm import Session

from core.ids import utcnow
from core.services import Services
from domain import audit, events
from domain.conversations import load, unexpired
from domain.errors import Conflict, Forbidden, NotFound
from domain.keys import conversation_key
from domain.messages import edit_aad, message_aad, settle
from domain.pagination import decode_cursor, encode_cursor
from domain.principals import Principal
from domain.users import ensure_users
from models import AuditEntry, DeliveryCursor, Message, MessageEdit, Report, User

QUEUE_KINDS = ("held", "reported", "flagged")
REPORTED = "reported"


def require_moderator(who: Principal) -> None:
    if not who.is_moderator:
        raise Forbidden("moderation needs a moderator or admin role, or an API key")


def _unresolved_reports() -> Any:
    return exists().where(Report.message_id == Message.id, Report.resolved_at.is_(None))


def _waiting(kind: str) -> Any:
    """What puts a message in the queue under `kind`."""
    if kind == "held":  # by policy, flood or reports: not delivered until a moderator decides
        return Message.state == "held"
    if kind == "reported":  # open reports, whether still delivered or held after them
        return _unresolved_reports()
    if kind == "flagged":  # delivered with something masked
        return and_(Message.state == "delivered", Message.moderation_action == "mask")
    raise ValueError(f"unknown queue kind {kind!r}")


def queue(
    session: Session, who: Principal, kind: str | None, cursor: str | None, limit: int
) -> tuple[list[Message], dict[str, int], str | None]:
    """Messages waiting for a moderator, oldest first, with their open report counts.

    Without a `kind`, every kind: one query over their union, so a message that is both held
    and reported comes once, and the id cursor pages across kinds with nothing skipped.
    """
    require_moderator(who)
    kinds = QUEUE_KINDS if kind is None else (kind,)
    stmt = select(Message).where(
        unexpired(),  # retention hid it: nothing left to review
        or_(*(_waiting(k) for k in kinds)),
    )
    if cursor:
        (last_id,) = decode_cursor(cursor, ("id",))
        stmt = stmt.where(Message.id > last_id)  # ULIDs: oldest first, stable under inserts
    rows = list(session.scalars(stmt.order_by(Message.id).limit(limit + 1)))
    next_cursor = None
    if len(rows) > limit:
        rows = rows[:limit]
        next_cursor = encode_cursor({"id": rows[-1].id})
    counts: dict[str, int] = {}
    if rows:
        counts = dict(
            session.execute(
                select(Report.message_id, func.count())
                .where(Report.message_id.in_([m.id for m in rows]), Report.resolved_at.is_(None))
                .group_by(Report.message_id)
            ).all()
        )
    return rows, counts, next_cursor


def _message(session: Session, mid: str) -> Message:
    msg = session.get(Message, mid)
    if msg is None:
        raise NotFound(f"message {mid} does not exist")
    return msg


def _resolve_reports(session: Session, mid: str) -> None:
    session.execute(
        update(Report)
        .where(Report.message_id == mid, Report.resolved_at.is_(None))
        .values(resolved_at=utcnow())
    )


def approve(
    svc: Services,
    session: Session,
    who: Principal,
    mid: str,
    reason: str | None,
    text: str | None = None,
) -> Message:
    """Deliver a held message (optionally with the moderator's edit of its text)."""
    require_moderator(who)
    msg = _message(session, mid)
    if msg.state != "held":
        raise Conflict(f"only held messages can be approved (this one is {msg.state})")
    conv = load(session, msg.conversation_id)
    if text is not None:
        if len(text) > svc.settings.max_text_length or not text.strip():
            from domain.errors import Invalid

            raise Invalid("the edited text is empty or too long", {"text": ["invalid length"]})
        dk = conversation_key(svc, session, conv)
        if msg.text_ct is not None and msg.key_id is not None:
            old = svc.keyring.open_text(msg.key_id, msg.text_ct, message_aad(mid))
            session.add(
                MessageEdit(
                    message_id=mid, key_id=dk, text_ct=svc.keyring.seal_text(dk, old, edit_aad(mid))
                )
            )
        msg.text_ct, msg.key_id = svc.keyring.seal_text(dk, text, message_aad(mid)), dk
        msg.edited_at = utcnow()
        msg.moderation_spans = []
    was_delivered = REPORTED in (msg.moderation_labels or [])
    msg.state = "delivered"
    msg.moderation_action = "allow"
    msg.moderation_reason = None
    _resolve_reports(session, mid)
    audit.record(
        session,
        who,
        "message.approve" if text is None else "message.edit_approve",
        "message",
        mid,
        reason=reason,
    )
    members = [p.user_id for p in conv.active_participants()]
    data = {"conversation_id": conv.id, "message_id": mid, "seq": msg.seq}
    # Recipients never saw a message held at moderation: it is new to them. One held after
    # reports was seen before: it comes back as an update.
    events.emit(session, "message.updated" if was_delivered else "message.new", data, members)
    preview = update(DeliveryCursor).where(DeliveryCursor.conversation_id == conv.id)
    if conv.last_seq > msg.seq:  # newer messages came after it: only fill an empty preview
        preview = preview.where(DeliveryCursor.last_message_id.is_(None))
    session.execute(preview.values(last_message_id=mid))
    return msg


def reject(session: Session, who: Principal, mid: str, reason: str) -> Message:
    """Refuse a held or reported message: only its sender (and moderators) see it from now."""
    require_moderator(who)
    msg = _message(session, mid)
    settle(session, msg)  # a fan-out in flight: its members saw the message, tell them
    if msg.state == "rejected":
        raise Conflict("the message is already rejected")
    conv = load(session, msg.conversation_id)
    seen_by_members = msg.state == "delivered" or REPORTED in (msg.moderation_labels or [])
    msg.state, msg.moderation_action, msg.moderation_reason = "rejected", "reject", reason[:300]
    _resolve_reports(session, mid)
    audit.record(session, who, "message.reject", "message", mid, reason=reason)
    users = (
        [p.user_id for p in conv.active_participants()]
        if seen_by_members
        else [msg.sender_id]
        if msg.sender_id
        else []
    )
    data = {"conversation_id": conv.id, "message_id": mid, "seq": msg.seq}
    events.emit(session, "message.updated", data, users)
    return msg


def hold_after_reports(session: Session, msg: Message, threshold: int) -> bool:
    """Hide a delivered message from recipients once `threshold` open reports name it."""
    if msg.state != "delivered" or threshold <= 0:
        return False
    open_reports = (
        session.scalar(
            select(func.count())
            .select_from(Report)
            .where(Report.message_id == msg.id, Report.resolved_at.is_(None))
        )
        or 0
    )
    if open_reports < threshold:
        return False
    conv = load(session, msg.conversation_id)
    msg.state = "held"
    msg.moderation_labels = sorted({*(msg.moderation_labels or []), REPORTED})
    msg.moderation_reason = f"held for review after {open_reports} reports"
    audit.record(
        session,
        Principal(user_id=None, api_key_id="system"),
        "message.auto_hold",
        "message",
        msg.id,
        reason=msg.moderation_reason,
    )
    data = {"conversation_id": conv.id, "message_id": msg.id, "seq": msg.seq}
    events.emit(session, "message.updated", data, [p.user_id for p in conv.active_participants()])
    return True


def mute(session: Session, who: Principal, user_id: str, minutes: int, reason: str) -> User:
    require_moderator(who)
    ensure_users(session, [user_id])
    user = session.get(User, user_id)
    assert user is not None
    user.muted_until = utcnow() + timedelta(minutes=minutes)
    audit.record(
        session, who, "user.mute", "user", user_id, reason=reason, detail={"minutes": minutes}
    )
    return user


def set_ban(session: Session, who: Principal, user_id: str, banned: bool, reason: str) -> User:
    require_moderator(who)
    ensure_users(session, [user_id])
    user = session.get(User, user_id)
    assert user is not None
    user.banned_at = utcnow() if banned else None
    if not banned:
        user.muted_until = None
    audit.record(
        session, who, "user.ban" if banned else "user.unban", "user", user_id, reason=reason
    )
    return user


def audit_page(
    session: Session, who: Principal, filters: Mapping[str, Any], cursor: str | None, limit: int
) -> tuple[list[AuditEntry], str | None]:
    """The audit log, newest first."""
    require_moderator(who)
    stmt = select(AuditEntry)
    for field in ("actor", "action", "target_type", "target_id"):
        if filters.get(field):
            stmt = stmt.where(getattr(AuditEntry, field) == filters[field])
    if cursor:
        (last_id,) = decode_cursor(cursor, ("id",))
        stmt = stmt.where(AuditEntry.id < int(last_id))
    rows = list(session.scalars(stmt.order_by(AuditEntry.id.desc()).limit(limit + 1)))
    next_cursor = None
    if len(rows) > limit:
        rows = rows[:limit]
        next_cursor = encode_cursor({"id": rows[-1].id})
    return rows, next_cursor
