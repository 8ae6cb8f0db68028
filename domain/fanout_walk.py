"""The fan-out's walk: what lies after each delivery cursor, read in one go, and what of it
can still be recorded after the walk was made without the write lock (SQLite, see
domain/fanout.py)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import Connection, Row, bindparam, select

from core.events import Event
from core.ids import utcnow
from models import DeliveryCursor, Message, Participant

logger = logging.getLogger(__name__)

BATCH = 200  # messages walked per conversation; a longer backlog gets a fan-out task of its own


def new_event_key(message_id: str) -> str:
    """The key under which a message's `message.new` is appended once per member."""
    return f"msg:{message_id}:new"


# Plain rows and Core statements, built once: the walk touches a few rows of each table, and
# ORM objects, their flush and building each statement cost more than running it.
Walked = Row[str, str, int, str, str | None, str | None]  # _WINDOW's columns
# The messages after each cursor: seq is gap-free, so a window of BATCH seqs is at most BATCH
# rows (a range of the (conversation_id, seq) index per cursor).
_WINDOW = (
    select(
        Message.conversation_id,
        Message.id,
        Message.seq,
        Message.state,
        Message.moderation_action,
        Message.sender_id,
    )
    .join(DeliveryCursor, DeliveryCursor.conversation_id == Message.conversation_id)
    .where(
        DeliveryCursor.conversation_id.in_(bindparam("c", expanding=True)),
        Message.seq > DeliveryCursor.fanout_seq,
        Message.seq <= DeliveryCursor.fanout_seq + BATCH,
    )
    .order_by(Message.conversation_id, Message.seq)
)


class Member(NamedTuple):
    """A recipient as the walk reads it (_MEMBERS' columns). A tuple, not the Core Row: a Row's
    attribute costs ~500 ns (found by `__getattr__` after the class lookup fails), and a
    1,000-member conversation reads several per member for every message."""

    conversation_id: str
    user_id: str
    notification_level: str
    muted_until: datetime | None


_MEMBERS = select(
    Participant.conversation_id,
    Participant.user_id,
    Participant.notification_level,
    Participant.muted_until,
).where(
    Participant.conversation_id.in_(bindparam("c", expanding=True)), Participant.left_at.is_(None)
)
_CURSORS = (
    select(DeliveryCursor.conversation_id, DeliveryCursor.fanout_seq)
    .where(DeliveryCursor.conversation_id.in_(bindparam("c", expanding=True)))
    .order_by(DeliveryCursor.conversation_id)
)
_CURSORS_LOCKED = _CURSORS.with_for_update()

_NOT_DELIVERED = ("held", "rejected")  # walked past, their sender told


class Walk:
    """What a walk found after each cursor: the rows it walked past, in seq order per
    conversation, and what recording them writes."""

    def __init__(self, members: dict[str, int]) -> None:
        self.members = members  # conversation -> its member count
        self.events: list[Event] = []
        self.seen: list[Walked] = []  # the rows walked past, as read
        self.pushes: list[tuple[str, list[str]]] = []  # (message id, users to consider)
        self.more: list[str] = []  # conversations with more than a batch waiting

    @property
    def done(self) -> list[str]:
        return [m.id for m in self.seen]

    @property
    def delivered(self) -> list[str]:
        return [m.id for m in self.seen if m.state not in _NOT_DELIVERED]

    def walked_by(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for m in self.seen:
            out.setdefault(m.conversation_id, []).append(m.id)
        return out

    def moves(self) -> list[dict[str, Any]]:
        """Each cursor's new seq, and its newest delivered message (None: keep the one it
        names)."""
        seq: dict[str, int] = {}
        last: dict[str, str] = {}
        for m in self.seen:
            seq[m.conversation_id] = m.seq
            if m.state not in _NOT_DELIVERED:
                last[m.conversation_id] = m.id
        return [{"cid": c, "seq": q, "mid": last.get(c)} for c, q in seq.items()]

    def kept(self, keep: Callable[[Walked], bool]) -> Walk:
        """This walk with only the rows `keep` accepts (the events stay appended: a later
        walk's are the same ones, which the streams skip)."""
        out = Walk(self.members)
        out.seen = [m for m in self.seen if keep(m)]
        ids = {m.id for m in out.seen}
        cids = {m.conversation_id for m in out.seen}
        out.pushes = [(m, users) for m, users in self.pushes if m in ids]
        out.more = [c for c in self.more if c in cids]
        return out


def walk_after_cursors(conn: Connection, cids: list[str], lock: bool) -> Walk:
    """Read the cursors (locked when `lock`), the members and the messages after each cursor,
    and plan the events: message.new for the members, or the held/rejected notice for the
    sender, up to the first message still in moderation."""
    cursors: dict[str, int] = dict(
        conn.execute(_CURSORS_LOCKED if lock else _CURSORS, {"c": cids}).all()
    )
    for gone in set(cids) - cursors.keys():
        logger.warning("fan-out: conversation gone", extra={"conversation_id": gone})
    if not cursors:
        return Walk({})
    members: dict[str, list[Member]] = {c: [] for c in cursors}
    for row in conn.execute(_MEMBERS, {"c": list(cursors)}).all():
        member = Member(*row)
        members[member.conversation_id].append(member)
    batches: dict[str, list[Walked]] = {c: [] for c in cursors}
    for msg in conn.execute(_WINDOW, {"c": list(cursors)}):
        batches[msg.conversation_id].append(msg)
    walk = Walk({c: len(ms) for c, ms in members.items()})
    for cid, batch in batches.items():
        member_rows = members[cid]
        member_ids = [p.user_id for p in member_rows]
        walked = 0
        for msg in batch:
            if msg.moderation_action is None:
                break  # still in moderation: its moderating task resumes the walk
            data = {"conversation_id": cid, "message_id": msg.id, "seq": msg.seq}
            if msg.state in _NOT_DELIVERED:
                if msg.sender_id:
                    key = f"msg:{msg.id}:{msg.state}"
                    walk.events.append(Event(key, "message.updated", data, [msg.sender_id]))
            else:
                walk.events.append(Event(new_event_key(msg.id), "message.new", data, member_ids))
                walk.pushes.append((msg.id, _push_candidates(msg, member_rows)))
            walk.seen.append(msg)
            walked += 1
        if walked == BATCH:
            walk.more.append(cid)
    return walk


# The walked rows as they are now: `as_read` compares them with the walk's.
_NOW = select(Message.id, Message.state, Message.moderation_action).where(
    Message.id.in_(bindparam("ids", expanding=True))
)


def as_read(conn: Connection, walk: Walk) -> tuple[Walk, set[str]]:
    """What of `walk` can be recorded now, and the conversations to walk again.

    Another walk may have recorded part of it meanwhile (cursors only ever move forward):
    what lies at or before a cursor now is left out, and the rest (appended after it, in
    order) is recorded from there. A conversation one of whose remaining rows changed state
    or verdict since it was read (a moderator decided) is left out whole, for a walk under
    the lock."""
    cids = list(dict.fromkeys(m.conversation_id for m in walk.seen))
    if not cids:
        return walk, set()
    now: dict[str, int] = dict(conn.execute(_CURSORS, {"c": cids}).all())
    rest = walk.kept(lambda m: m.seq > now.get(m.conversation_id, m.seq))  # gone: nothing
    if not rest.seen:
        return rest, set()
    as_now = {r.id: (r.state, r.moderation_action) for r in conn.execute(_NOW, {"ids": rest.done})}
    changed = {
        m.conversation_id for m in rest.seen if as_now.get(m.id) != (m.state, m.moderation_action)
    }
    return rest.kept(lambda m: m.conversation_id not in changed), changed


def _push_candidates(msg: Walked, members: Sequence[Member]) -> list[str]:
    """Recipients who asked to hear about messages now; who is offline is decided at push time."""
    now: datetime = utcnow()
    sender = msg.sender_id  # read once: a Row's attribute is slow, and members can be 1,000
    return [
        p.user_id
        for p in members
        if p.user_id != sender
        and p.notification_level != "none"
        and (p.muted_until is None or p.muted_until <= now)
    ]
