"""Conversations: creation (with get-or-create), access, membership and per-user settings."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import and_, delete, exists, func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, aliased

from core.ids import utcnow
from core.services import Services
from domain import audit, events
from domain.errors import Conflict, Forbidden, Invalid, NotFound
from domain.pagination import decode_cursor, encode_cursor
from domain.principals import Principal
from domain.retention.conversation_purge import start_conversation_purge
from domain.retention.shredding import shred_conversation_keys
from domain.users import ensure_users
from models import Conversation, DeliveryCursor, Job, Message, Participant, User

MANAGER_ROLES = frozenset({"owner", "admin"})
PIN_ROLES = frozenset({"owner", "admin", "moderator"})


def _dedupe_key(
    ctype: str, members: Sequence[str], context: Mapping[str, str] | None
) -> str | None:
    if context is None and ctype != "direct":
        return None
    basis = {"t": ctype, "m": sorted(members), "c": dict(context) if context else None}
    return hashlib.sha256(json.dumps(basis, sort_keys=True).encode()).hexdigest()


def create(
    svc: Services, session: Session, who: Principal, body: Mapping[str, Any]
) -> tuple[Conversation, bool]:
    """Create a conversation, or return the existing one for the same direct pair / context."""
    ctype: str = body["type"]
    members = list(dict.fromkeys(body.get("members") or []))
    if who.user_id is not None and who.user_id not in members:
        members.insert(0, who.user_id)
    if ctype == "direct" and len(members) != 2:
        raise Invalid(
            "a direct conversation has exactly two members (you and one other user)",
            {"members": ["must name exactly one other user"]},
        )
    if len(members) < 1:
        raise Invalid("a conversation needs members", {"members": ["must not be empty"]})
    if len(members) > svc.settings.max_members:
        raise Invalid(
            f"at most {svc.settings.max_members} members",
            {"members": [f"longer than {svc.settings.max_members}"]},
        )
    context = body.get("context")
    key = _dedupe_key(ctype, members, context)
    if key is not None:
        found = session.scalar(select(Conversation).where(Conversation.dedupe_key == key))
        if found is not None:
            return found, False
    ensure_users(session, members)
    conv = Conversation(
        type=ctype,
        subject=body.get("subject"),
        context_type=context["type"] if context else None,
        context_id=context["id"] if context else None,
        meta=body.get("metadata") or {},
        dedupe_key=key,
        created_by=who.label,
    )
    session.add(conv)
    session.flush()
    session.add(DeliveryCursor(conversation_id=conv.id))
    for uid in members:
        role = "owner" if uid == who.user_id else "member"
        session.add(Participant(conversation_id=conv.id, user_id=uid, role=role))
    try:
        session.flush()
    except IntegrityError:
        # Lost a get-or-create race: the other request's conversation wins.
        session.rollback()
        found = session.scalar(select(Conversation).where(Conversation.dedupe_key == key))
        if found is None:
            raise
        return found, False
    session.refresh(conv)
    return conv, True


def load(session: Session, cid: str) -> Conversation:
    conv = session.get(Conversation, cid)
    if conv is None or conv.deleted_at is not None:
        raise NotFound(f"conversation {cid} does not exist or you are not a participant")
    return conv


def membership(session: Session, cid: str, user_id: str | None) -> Participant | None:
    """The user's current membership: one primary-key lookup, whatever the group's size."""
    if user_id is None:
        return None
    part = session.get(Participant, (cid, user_id))
    return part if part is not None and part.left_at is None else None


def readable(session: Session, who: Principal, cid: str) -> tuple[Conversation, Participant | None]:
    """The conversation and the caller's membership; 404 (not 403) hides others' conversations."""
    conv = load(session, cid)
    part = membership(session, cid, who.user_id)
    if part is None and not who.is_moderator:
        raise NotFound(f"conversation {cid} does not exist or you are not a participant")
    return conv, part


def manageable(
    session: Session, who: Principal, cid: str
) -> tuple[Conversation, Participant | None]:
    conv, part = readable(session, who, cid)
    if not who.is_service and (part is None or part.role not in MANAGER_ROLES):
        raise Forbidden("only the conversation's owner or admins may change it")
    return conv, part


def update(session: Session, who: Principal, cid: str, body: Mapping[str, Any]) -> Conversation:
    conv, _ = manageable(session, who, cid)
    changes = {}
    for field, attr in (("subject", "subject"), ("status", "status"), ("metadata", "meta")):
        if field in body and getattr(conv, attr) != body[field]:
            changes[field] = body[field]
            setattr(conv, attr, body[field])
    if changes:
        audit.record(session, who, "conversation.update", "conversation", cid, detail=changes)
        _announce(session, conv, "updated")
    return conv


def add_members(
    session: Session, who: Principal, cid: str, user_ids: Sequence[str], role: str, max_members: int
) -> Conversation:
    conv, _ = manageable(session, who, cid)
    if conv.type == "direct":
        raise Conflict("a direct conversation cannot gain members; create a group instead")
    active = {p.user_id for p in conv.active_participants()}
    new = [u for u in dict.fromkeys(user_ids) if u not in active]
    if len(active) + len(new) > max_members:
        raise Invalid(f"at most {max_members} members", {"user_ids": ["too many members"]})
    ensure_users(session, new)
    by_user = {p.user_id: p for p in conv.participants}
    for uid in new:
        if uid in by_user:  # re-joining after leaving: history up to now counts as read
            p = by_user[uid]
            p.left_at, p.role, p.joined_at = None, role, utcnow()
            p.read_seq = p.delivered_seq = conv.last_seq
        else:
            session.add(
                Participant(
                    conversation_id=cid,
                    user_id=uid,
                    role=role,
                    read_seq=conv.last_seq,
                    delivered_seq=conv.last_seq,
                )
            )
    if new:
        session.flush()
        session.refresh(conv)
        audit.record(session, who, "members.add", "conversation", cid, detail={"users": new})
        _announce(session, conv, "members")
    return conv


def remove_member(session: Session, who: Principal, cid: str, user_id: str) -> Conversation:
    conv, part = readable(session, who, cid)
    leaving_self = who.user_id == user_id
    if not leaving_self and not who.is_service and (part is None or part.role not in MANAGER_ROLES):
        raise Forbidden("only owners or admins may remove other members")
    target = membership(session, cid, user_id)
    if target is None:
        raise NotFound(f"{user_id} is not a member of this conversation")
    if conv.type == "direct" and not leaving_self and not who.is_service:
        raise Conflict("members of a direct conversation can only leave it themselves")
    recipients = [p.user_id for p in conv.active_participants()]
    target.left_at = utcnow()
    audit.record(session, who, "members.remove", "conversation", cid, detail={"user": user_id})
    _announce(session, conv, "members", recipients)
    return conv


def set_role(session: Session, who: Principal, cid: str, user_id: str, role: str) -> Conversation:
    conv, _ = manageable(session, who, cid)
    target = membership(session, cid, user_id)
    if target is None:
        raise NotFound(f"{user_id} is not a member of this conversation")
    if target.role == "owner" and role != "owner":
        owners = [p for p in conv.active_participants() if p.role == "owner"]
        if len(owners) == 1:
            raise Conflict("a conversation keeps at least one owner; promote another first")
    target.role = role
    audit.record(
        session, who, "members.role", "conversation", cid, detail={"user": user_id, "role": role}
    )
    _announce(session, conv, "members")
    return conv


def update_my_settings(
    session: Session, who: Principal, cid: str, body: Mapping[str, Any]
) -> Participant:
    _, part = readable(session, who, cid)
    if part is None:
        raise Forbidden("only participants have per-user settings")
    for field in ("archived", "muted_until", "notification_level"):
        if field in body:
            setattr(part, field, body[field])
    return part


def delete_conversation(session: Session, who: Principal, cid: str) -> tuple[Job, list[str]]:
    """Delete a conversation for everyone (its owners, or an API key).

    Its data keys are shredded in this transaction, so its ciphertext cannot be opened from the
    commit on; members lose it at once; a job purges the rows and files in batches. Returns the
    job and the shredded key ids, which the caller drops from key caches after the commit.
    """
    conv, part = readable(session, who, cid)
    if not who.is_service and (part is None or part.role != "owner"):
        raise Forbidden("only the conversation's owners, or an API key, may delete it")
    _announce(session, conv, "deleted")
    conv.deleted_at = utcnow()
    conv.data_key_id = None
    conv.dedupe_key = None  # the same members or context may start afresh
    session.execute(delete(Participant).where(Participant.conversation_id == cid))
    shredded = shred_conversation_keys(session, cid)
    job = start_conversation_purge(session, who, cid)
    audit.record(
        session, who, "conversation.delete", "conversation", cid, detail={"job_id": job.id}
    )
    return job, shredded


def _announce(
    session: Session, conv: Conversation, what: str, recipients: Sequence[str] | None = None
) -> None:
    users = list(recipients) if recipients else [p.user_id for p in conv.active_participants()]
    events.emit(
        session, "conversation.updated", {"conversation_id": conv.id, "change": what}, users
    )


# --- listing --------------------------------------------------------------------------------


def unexpired() -> Any:
    """Messages retention has not hidden (domain/retention/purge.py): every read path filters on it,
    moderators included, so a hidden message is gone everywhere at once."""
    return Message.expired_at.is_(None)


def visible_to_reader(user_id: str) -> Any:
    """Messages a participant sees: delivered ones, plus their own at any state."""
    return and_(unexpired(), or_(Message.state == "delivered", Message.sender_id == user_id))


def unread_filter(user_id: str) -> Any:
    return and_(
        Message.conversation_id == Participant.conversation_id,
        Message.seq > Participant.read_seq,
        Message.state == "delivered",
        Message.deleted_at.is_(None),
        unexpired(),
        or_(Message.sender_id.is_(None), Message.sender_id != user_id),
    )


def list_for(
    session: Session,
    who: Principal,
    *,
    status: str | None,
    context_type: str | None,
    context_id: str | None,
    archived: bool | None,
    unread_only: bool,
    cursor: str | None,
    limit: int,
    q: str | None = None,
) -> tuple[list[Conversation], dict[str, Participant], dict[str, int], str | None]:
    """A page of conversations, newest activity first, with the caller's membership and unread.
    `q` matches the subject or a current member's name (both stored in plaintext), ignoring
    case (ASCII case only on SQLite, whose lower() knows no other)."""
    stmt = select(Conversation)
    me = who.user_id
    if me is not None:
        stmt = stmt.join(
            Participant,
            and_(
                Participant.conversation_id == Conversation.id,
                Participant.user_id == me,
                Participant.left_at.is_(None),
            ),
        )
        if archived is not None:
            stmt = stmt.where(Participant.archived.is_(archived))
        if unread_only:
            stmt = stmt.where(exists().where(unread_filter(me)))
    elif not who.is_service:
        raise Forbidden("listing conversations needs a user token or an API key")
    stmt = stmt.where(Conversation.deleted_at.is_(None))
    if status:
        stmt = stmt.where(Conversation.status == status)
    if context_type:
        stmt = stmt.where(Conversation.context_type == context_type)
    if context_id:
        stmt = stmt.where(Conversation.context_id == context_id)
    if q:
        stmt = stmt.where(_subject_or_member_named(q))
    if cursor:
        at_dt, last_id = decode_cursor(cursor, {"t": datetime, "id": str})
        stmt = stmt.where(
            or_(
                Conversation.last_activity_at < at_dt,
                and_(Conversation.last_activity_at == at_dt, Conversation.id < last_id),
            )
        )
    stmt = stmt.order_by(Conversation.last_activity_at.desc(), Conversation.id.desc()).limit(
        limit + 1
    )
    rows = list(session.scalars(stmt))
    next_cursor = None
    if len(rows) > limit:
        rows = rows[:limit]
        last = rows[-1]
        next_cursor = encode_cursor({"t": last.last_activity_at.isoformat(), "id": last.id})
    mine: dict[str, Participant] = {}
    unread: dict[str, int] = {}
    if me is not None and rows:
        ids = [c.id for c in rows]
        for p in session.scalars(
            select(Participant).where(
                Participant.conversation_id.in_(ids), Participant.user_id == me
            )
        ):
            mine[p.conversation_id] = p
        unread = unread_counts(session, me, ids)
    return rows, mine, unread, next_cursor


def _subject_or_member_named(q: str) -> Any:
    pattern = "%" + q.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
    member = aliased(Participant)
    named = exists().where(
        member.conversation_id == Conversation.id,
        member.left_at.is_(None),
        User.id == member.user_id,
        func.lower(User.name).like(pattern, escape="\\"),
    )
    return or_(func.lower(Conversation.subject).like(pattern, escape="\\"), named)


def last_messages(session: Session, conversation_ids: Sequence[str]) -> dict[str, Message]:
    """The newest delivered message of each conversation (the list's preview), by
    conversation; one whose message is gone (purged, erased) has none."""
    stmt = (
        select(DeliveryCursor.conversation_id, Message)
        .join(Message, Message.id == DeliveryCursor.last_message_id)
        .where(DeliveryCursor.conversation_id.in_(conversation_ids))
    )
    return {cid: msg for cid, msg in session.execute(stmt)}


def unread_counts(
    session: Session, user_id: str, conversation_ids: Sequence[str]
) -> dict[str, int]:
    stmt = (
        select(Message.conversation_id, func.count())
        .join(
            Participant,
            and_(Participant.user_id == user_id, Participant.left_at.is_(None)),
        )
        .where(Message.conversation_id.in_(conversation_ids), unread_filter(user_id))
        .group_by(Message.conversation_id)
    )
    return {cid: n for cid, n in session.execute(stmt)}


def unread_totals(session: Session, user_id: str) -> dict[str, int]:
    stmt = (
        select(Message.conversation_id, func.count())
        .join(Participant, and_(Participant.user_id == user_id, Participant.left_at.is_(None)))
        .where(unread_filter(user_id))
        .group_by(Message.conversation_id)
    )
    per: dict[str, int] = {cid: n for cid, n in session.execute(stmt)}
    return {"total": sum(per.values()), "conversations": len(per)}
