"""What members do to a message that exists: pin it, react to it, report it; and the read
cursor with its receipts. Posting, reading, editing and deleting are domain/messages.py."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import emoji as emoji_lib
from sqlalchemy import case, delete, func, select
from sqlalchemy.orm import Session

from core.ids import utcnow
from domain import audit, events, notifications
from domain.conversations import PIN_ROLES, readable
from domain.errors import Conflict, Forbidden, Invalid
from domain.messages import PASSED, announce, get_visible, settle
from domain.principals import Principal
from models import Message, Participant, Reaction, Report

REPORT_REASONS = ("spam", "abuse", "harassment", "contact_details", "fraud", "other")
MAX_EMOJI = 32  # reactions.emoji is String(32): the longest emoji sequence is 10 code points


def set_pinned(session: Session, who: Principal, mid: str, pinned: bool) -> Message:
    msg, conv, part = get_visible(session, who, mid)
    settle(session, msg)
    if not who.is_moderator and (part is None or part.role not in PIN_ROLES):
        raise Forbidden("only owners, admins and moderators of the conversation may pin")
    if msg.deleted_at is not None:
        raise Conflict("a deleted message cannot be pinned")
    if pinned != (msg.pinned_at is not None):
        msg.pinned_at = utcnow() if pinned else None
        msg.pinned_by = who.label if pinned else None
        audit.record(session, who, "message.pin" if pinned else "message.unpin", "message", mid)
        announce(session, conv, msg, "message.updated")
    return msg


def reaction_text(raw: str, adding: bool) -> str:
    """A reaction is one emoji as Unicode defines it (skin tones, ZWJ sequences, flags and
    keycaps included), checked with the `emoji` library; a 422 names anything else. Removing
    takes any text up to the column's size, so reactions stored before this rule can go."""
    if adding and not emoji_lib.is_emoji(raw):
        raise Invalid(
            "a reaction is one emoji, such as 👍 or 👍🏽; other text is refused",
            {"emoji": ["must be exactly one emoji"]},
        )
    if not 0 < len(raw) <= MAX_EMOJI:
        raise Invalid(
            f"a reaction is 1-{MAX_EMOJI} characters", {"emoji": [f"1-{MAX_EMOJI} characters"]}
        )
    return raw


def react(session: Session, who: Principal, mid: str, emoji: str, on: bool) -> Message:
    emoji = reaction_text(emoji, adding=on)  # before any query: bad input costs nothing
    msg, conv, part = get_visible(session, who, mid)
    user = who.require_user()
    if part is None or part.role == "observer":
        raise Forbidden("only members may react")
    # A passed verdict whose fan-out has not committed yet is delivered as far as anyone can
    # tell: its `message.new` may be on the sockets already (see domain.messages.can_see).
    # `settle` waits for a fan-out in flight, so the reaction's event follows its message.new.
    settle(session, msg)
    reached = msg.state == "delivered" or (
        msg.state == "pending" and msg.moderation_action in PASSED
    )
    if not reached or msg.deleted_at is not None:
        raise Conflict("only delivered, undeleted messages take reactions")
    exists_now = session.get(Reaction, (mid, user, emoji)) is not None
    if on and not exists_now:
        session.add(Reaction(message_id=mid, user_id=user, emoji=emoji))
    elif not on and exists_now:
        session.execute(
            delete(Reaction).where(
                Reaction.message_id == mid, Reaction.user_id == user, Reaction.emoji == emoji
            )
        )
    else:
        return msg
    data = {
        "conversation_id": conv.id,
        "message_id": mid,
        "user_id": user,
        "emoji": emoji,
        "action": "added" if on else "removed",
    }
    events.emit(session, "reaction", data, [p.user_id for p in conv.active_participants()])
    return msg


def report(
    session: Session, who: Principal, mid: str, reason: str, note: str | None
) -> tuple[Report, bool]:
    msg, _, part = get_visible(session, who, mid)
    settle(session, msg)  # so that hold_after_reports sees it delivered if it just was
    user = who.require_user()
    if part is None:
        raise Forbidden("only participants may report messages")
    if msg.sender_id == user:
        raise Conflict("you cannot report your own message")
    found = session.scalar(
        select(Report).where(Report.message_id == mid, Report.reporter_id == user)
    )
    if found is not None:
        return found, False
    row = Report(message_id=mid, reporter_id=user, reason=reason, note=note)
    session.add(row)
    session.flush()
    return row, True


def mark_read(session: Session, who: Principal, cid: str, seq: int) -> Participant:
    conv, part = readable(session, who, cid)
    if part is None:
        raise Forbidden("only participants have a read cursor")
    if seq > conv.last_seq:
        raise Invalid(
            f"seq {seq} is beyond the last message ({conv.last_seq})",
            {"seq": [f"must be at most {conv.last_seq}"]},
        )
    if seq > part.read_seq:
        part.read_seq = seq
        part.delivered_seq = max(part.delivered_seq, seq)
        others = [p.user_id for p in conv.active_participants() if p.user_id != part.user_id]
        events.emit(
            session,
            "receipt",
            {"conversation_id": cid, "user_id": part.user_id, "read_seq": seq},
            others,
        )
        notifications.on_conversation_read(session, part.user_id, cid, seq)  # badge, retraction
    return part


def reactions_for(
    session: Session, ids: Sequence[str], me: str | None
) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    if not ids:
        return out
    stmt = (
        select(
            Reaction.message_id,
            Reaction.emoji,
            func.count(),
            func.max(case((Reaction.user_id == (me or ""), 1), else_=0)),
        )
        .where(Reaction.message_id.in_(ids))
        .group_by(Reaction.message_id, Reaction.emoji)
        .order_by(Reaction.message_id, func.min(Reaction.created_at))
    )
    for mid, emoji, n, mine in session.execute(stmt):
        out.setdefault(mid, []).append({"emoji": emoji, "count": n, "me": bool(mine)})
    return out
