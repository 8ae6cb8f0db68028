"""The database side of live delivery: what the web process's hub (web/live/) reads and writes.

The hub renders stream entries in batches, tells small conversations who came online, and moves
delivered cursors as frames reach sockets. Its queries live here so web/live/ holds no SQL; each
takes the session its caller opened (`svc.ReadSession` for reads: SQLite's DEFERRED
transactions never wait for the write lock, whose busy wait would stall a gevent process).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Mapping
from datetime import datetime
from typing import Any, NamedTuple, cast

from sqlalchemy import Table, bindparam, func, select, update
from sqlalchemy.orm import Session

from domain.messages import members_of
from models import Message, Participant, Reaction

MEMBER_COLUMNS = (
    Participant.conversation_id,
    Participant.user_id,
    Participant.role,
    Participant.read_seq,
    Participant.delivered_seq,
    Participant.left_at,
)


class LiveMember(NamedTuple):
    """A member as the hub reads it (MEMBER_COLUMNS): render_message and can_see read only
    these attributes of a Participant. A tuple's attribute costs ~40 ns; a Core Row's (found
    by `__getattr__` after the class lookup fails) ~500 ns, and a 1,000-member render reads
    thousands."""

    conversation_id: str
    user_id: str
    role: str
    read_seq: int
    delivered_seq: int
    left_at: datetime | None


# Built once: a hub round renders a message or two, and building, coercing and keying these
# statements cost as much as running them.
_MESSAGES = select(Message).where(Message.id.in_(bindparam("ids", expanding=True)))
_MEMBERS = select(*MEMBER_COLUMNS).where(
    Participant.conversation_id.in_(bindparam("cids", expanding=True)),
    Participant.left_at.is_(None),
)
_REACTIONS = (
    select(Reaction.message_id, Reaction.emoji, Reaction.user_id)
    .where(Reaction.message_id.in_(bindparam("ids", expanding=True)))
    .order_by(Reaction.created_at)
)


class RenderBatch(NamedTuple):
    """Everything a batch of message events needs to be rendered for many viewers."""

    messages: dict[str, Message]  # by id; purged or erased ones are missing
    members: dict[str, list[Participant]]  # active members by conversation (plain rows)
    shared: dict[str, list[dict[str, Any]]]  # reactions by message, as nobody's own
    mine: dict[tuple[str, str], set[str]]  # (user, message) → that user's emojis


def render_batch(
    session: Session, message_ids: Collection[str], users: Collection[str]
) -> RenderBatch:
    """The messages, their conversations' active members and the reactions, read once for a
    whole wake-up. The objects are only valid while `session` is open."""
    messages = {m.id: m for m in session.scalars(_MESSAGES, {"ids": list(message_ids)})}
    cids = {m.conversation_id for m in messages.values()}
    members: dict[str, list[Participant]] = defaultdict(list)
    # Tuples, not ORM objects: a 1,000-member group would otherwise build 1,000 instances per
    # wake-up (and Core rows skip the ORM's row processing too). Fetched in one call (iterating
    # a result fetches row by row).
    for row in session.connection().execute(_MEMBERS, {"cids": list(cids)}).all():
        p = LiveMember(*row)
        members[p.conversation_id].append(cast(Participant, p))
    # One read of the reactions gives both views: the counts everyone sees (each message's
    # emojis in order of first use, as domain/message_actions.reactions_for orders them) and
    # each viewer's own emojis (filtered here: `IN` 1,000 viewers costs more).
    counts: dict[str, dict[str, int]] = defaultdict(dict)
    mine: dict[tuple[str, str], set[str]] = defaultdict(set)
    for mid, emoji, user in session.connection().execute(_REACTIONS, {"ids": list(messages)}):
        counts[mid][emoji] = counts[mid].get(emoji, 0) + 1
        if user in users:
            mine[(user, mid)].add(emoji)
    shared = {
        mid: [{"emoji": e, "count": n, "me": False} for e, n in emojis.items()]
        for mid, emojis in counts.items()
    }
    return RenderBatch(messages, members, shared, mine)


def member_ids(session: Session, conversation_id: str) -> list[str]:
    """The active members of a conversation (who may type in it, and hear it)."""
    return [p.user_id for p in members_of(session, conversation_id)]


def presence_audience(session: Session, users: Collection[str], limit: int) -> dict[str, set[str]]:
    """Who hears that each user came online or went offline: the other active members of the
    user's conversations with at most `limit` members (larger groups ask over REST)."""
    P = Participant
    mine = session.execute(
        select(P.conversation_id, P.user_id).where(P.user_id.in_(users), P.left_at.is_(None))
    ).all()
    if not mine:
        return {}
    cids = {cid for cid, _ in mine}
    small = {
        cid
        for cid, n in session.execute(
            select(P.conversation_id, func.count())
            .where(P.conversation_id.in_(cids), P.left_at.is_(None))
            .group_by(P.conversation_id)
        )
        if n <= limit
    }
    if not small:
        return {}
    members: dict[str, list[str]] = defaultdict(list)
    for cid, user in session.execute(
        select(P.conversation_id, P.user_id).where(
            P.conversation_id.in_(small), P.left_at.is_(None)
        )
    ):
        members[cid].append(user)
    out: dict[str, set[str]] = defaultdict(set)
    for cid, user in mine:
        out[user].update(m for m in members.get(cid, ()) if m != user)
    return {u: to for u, to in out.items() if to}


_participants = cast(Table, Participant.__table__)
# Built once, a Core statement: constructing an ORM UPDATE per group cost more than running it
# (a hub flushes several times a second).
_SAVE_DELIVERED = (
    update(_participants)
    .where(
        _participants.c.conversation_id == bindparam("cid"),
        _participants.c.user_id.in_(bindparam("users", expanding=True)),
        _participants.c.delivered_seq < bindparam("seq"),
    )
    .values(delivered_seq=bindparam("seq"))
)


def save_delivered(session: Session, cursors: Mapping[tuple[str, str], int]) -> None:
    """Move participants' delivered cursors ((conversation, user) → seq) forward, never back:
    one UPDATE per conversation and seq, so a message fanned out to 1,000 sockets costs one
    statement."""
    groups: dict[tuple[str, int], list[str]] = defaultdict(list)
    for (cid, user), seq in cursors.items():
        groups[(cid, seq)].append(user)
    conn = session.connection()
    for (cid, seq), users in groups.items():
        conn.execute(_SAVE_DELIVERED, {"cid": cid, "users": users, "seq": seq})
