"""Fan-out: every ready message reaches every member's event stream, in seq order, exactly once.

`drain_many` walks a batch of conversations in one transaction: under locks on their delivery
cursors it takes the messages after each cursor in seq order, stops at the first one still in
moderation (its moderating task resumes the walk), and appends `message.new` to each member's
stream through `EventLog.append_many` (one round trip for the batch), so a re-run adds
nothing. The same transaction moves the cursors and writes the search index. Redis effects
happen before the commit: a crash after them and before the commit repeats them harmlessly; a
crash before them loses nothing because the cursors did not move. Run by tasks/fanout.py and,
inline, by the moderation stage (domain/moderation_stage.py)."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, NamedTuple, cast

from sqlalchemy import Row, String, Table, bindparam, func, select, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from core.events import PRESENCE_PREFIX, Event, EventLog
from core.ids import utcnow
from core.services import Services
from domain import outbox
from domain.events import PUBLISH_TASK
from domain.messages import MODERATE_TASK
from domain.search import stage as search_stage
from models import DeliveryCursor, Message, Participant
from models.db import connection_of

logger = logging.getLogger(__name__)

FANOUT_TASK = "tasks.fanout.fanout_conversation"
NOTIFY_OFFLINE_TASK = "tasks.push.notify_offline"
BATCH = 200


def event_log(svc: Services) -> EventLog:
    return EventLog(svc.redis, svc.settings.stream_maxlen)


def new_event_key(message_id: str) -> str:
    """The key under which a message's `message.new` is appended once per member."""
    return f"msg:{message_id}:new"


# Set after a fan-out commits, for each message it walked: the tasks of a burst that find
# their messages taken by an earlier batch end on one Redis read instead of reading the
# database. Short-lived: a task that finds none reads the database.
WALKED_PREFIX = "parley:walked:"
WALKED_TTL_S = 600
# How far behind the pipeline runs: how long the oldest message of the last moderation batch
# waited to be taken (queueing, not the stages' own work), recorded with that batch's fan-out
# and read by the web's pacing (domain/ingest.Pacer). Short-lived: after a second without a
# fan-out nothing is known, and nobody is paced.
LAG_KEY = "parley:pipeline:lag_ms"
LAG_TTL_MS = 1000


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
_cursors = cast(Table, DeliveryCursor.__table__)
# The cursor moves, and names the newest message delivered (None: a walk of held or rejected
# messages only, which keeps the one before).
_MOVE = (
    update(_cursors)
    .where(_cursors.c.conversation_id == bindparam("cid"))
    .values(
        fanout_seq=bindparam("seq"),
        last_message_id=func.coalesce(bindparam("mid", type_=String), _cursors.c.last_message_id),
    )
)
_messages = cast(Table, Message.__table__)
_DELIVERED = (
    update(_messages)
    .where(_messages.c.id.in_(bindparam("ids", expanding=True)))
    .values(state="delivered")
)


def walked(svc: Services, message_ids: Sequence[str]) -> list[bool]:
    """Whether a committed fan-out has walked past each message (its `message.new` is in the
    streams, or its held/rejected notice, and the cursor moved), as far as Redis still knows:
    one MGET for the lot."""
    if not message_ids:
        return []
    return [v is not None for v in svc.redis.mget([WALKED_PREFIX + m for m in message_ids])]


# `_mark_walked`'s one command. KEYS: the n walked marks, the lag's key, then the presence
# keys to read; ARGV: n, the marks' TTL (s), the lag ('' for none) and its TTL (ms). Returns
# 1 or 0 per presence key: whether that user is online.
_MARK_WALKED = """
local n = tonumber(ARGV[1])
for i = 1, n do
  redis.call('SET', KEYS[i], 1, 'EX', ARGV[2])
end
if ARGV[3] ~= '' then
  redis.call('SET', KEYS[n + 1], ARGV[3], 'PX', ARGV[4])
end
local online = {}
for i = n + 2, #KEYS do
  online[#online + 1] = redis.call('EXISTS', KEYS[i])
end
return online
"""


def _mark_walked(
    svc: Services, message_ids: Sequence[str], waited_ms: float | None, users: Iterable[str]
) -> set[str]:
    """The walked marks and the pipeline's lag (see LAG_KEY) written, and those of `users`
    who are online now read (core.events.online_among), in one command (a script: a pipeline
    of a command per message costs several times more to build and parse)."""
    candidates = list(dict.fromkeys(users))
    if not message_ids and not candidates:
        return set()
    keys = [WALKED_PREFIX + mid for mid in message_ids]
    keys += [LAG_KEY, *(PRESENCE_PREFIX + u for u in candidates)]
    lag = "" if waited_ms is None else round(waited_ms, 1)
    found = svc.redis.register_script(_MARK_WALKED)(
        keys=keys, args=[len(message_ids), WALKED_TTL_S, lag, LAG_TTL_MS]
    )
    return {u for u, v in zip(candidates, found, strict=True) if int(v)}


def lag_ms(svc: Services) -> float:
    """The pipeline's last known lag (see LAG_KEY), 0 when none is known."""
    found = svc.redis.get(LAG_KEY)
    return float(found) if found is not None else 0.0


def drain(svc: Services, conversation_id: str) -> None:
    """Fan out every message of the conversation that is ready (see `drain_many`)."""
    drain_many(svc, [conversation_id])


def drain_many(
    svc: Services, conversation_ids: Iterable[str], waited_ms: float | None = None
) -> None:
    """Fan out every ready message of these conversations, in seq order within each, in one
    transaction and one Redis round trip; send the push intents of those who may be away, and
    a fan-out task for each conversation whose backlog did not fit in the batch.

    The delivery cursors are locked in conversation-id order (PostgreSQL; SQLite's BEGIN
    IMMEDIATE serializes writers anyway), so two drains over overlapping sets never deadlock:
    the later one waits, then finds the cursors moved. `waited_ms`: the moderation batch's
    queue wait, recorded as the pipeline's lag (LAG_KEY)."""
    cids = sorted(set(conversation_ids))
    if not cids:
        return
    events: list[Event] = []
    pushes: list[tuple[str, list[str]]] = []  # (message id, users to consider for a push)
    more: list[str] = []
    with svc.Session.begin() as s:
        conn = connection_of(s)
        stmt = _CURSORS if svc.dialect == "sqlite" else _CURSORS_LOCKED
        cursors: dict[str, int] = dict(conn.execute(stmt, {"c": cids}).all())
        for gone in set(cids) - cursors.keys():
            logger.warning("fan-out: conversation gone", extra={"conversation_id": gone})
        if not cursors:
            return
        members: dict[str, list[Member]] = {c: [] for c in cursors}
        for row in conn.execute(_MEMBERS, {"c": list(cursors)}).all():
            member = Member(*row)
            members[member.conversation_id].append(member)
        batches: dict[str, list[Walked]] = {c: [] for c in cursors}
        for msg in conn.execute(_WINDOW, {"c": list(cursors)}):
            batches[msg.conversation_id].append(msg)
        done: list[str] = []
        delivered: list[str] = []
        walked_by: dict[str, list[str]] = {}
        moved: dict[str, int] = {}  # conversation -> its cursor's new seq
        last: dict[str, str] = {}  # conversation -> its newest delivered message
        for cid, batch in batches.items():
            member_rows = members[cid]
            member_ids = [p.user_id for p in member_rows]
            walked = 0
            for msg in batch:
                if msg.moderation_action is None:
                    break  # still in moderation: its moderating task resumes the walk
                data = {"conversation_id": cid, "message_id": msg.id, "seq": msg.seq}
                if msg.state in ("held", "rejected"):
                    if msg.sender_id:
                        key = f"msg:{msg.id}:{msg.state}"
                        events.append(Event(key, "message.updated", data, [msg.sender_id]))
                else:
                    events.append(Event(new_event_key(msg.id), "message.new", data, member_ids))
                    delivered.append(msg.id)
                    last[cid] = msg.id
                    pushes.append((msg.id, _push_candidates(msg, member_rows)))
                moved[cid] = msg.seq
                done.append(msg.id)
                walked += 1
            if walked == BATCH:
                more.append(cid)
            walked_by[cid] = done[len(done) - walked :]
            if walked:
                logger.info(
                    "fanned out %d message(s) to %d member(s)",
                    walked,
                    len(member_ids),
                    extra={"conversation_id": cid, "seq": moved[cid]},
                )
        event_log(svc).append_many(events)  # before the commit: a crash in between repeats it
        if delivered:
            conn.execute(_DELIVERED, {"ids": delivered})
        if moved:
            conn.execute(
                _MOVE, [{"cid": c, "seq": q, "mid": last.get(c)} for c, q in moved.items()]
            )
        # The search index moves with the cursors, after the streams (docs/search.md); the
        # messages' rows and the cursors are written first, in the order an edit takes its
        # locks. The conversation's own row is not written: posts reserve their seqs there.
        _index(svc, s, walked_by)
        outbox.mark_done(s, done, MODERATE_TASK)
    # Who is online now gets the message live: only the others are worth a push task (which
    # checks presence again before it records anything).
    online = _mark_walked(svc, done, waited_ms, (u for _, users in pushes for u in users))
    pushes = [(mid, [u for u in users if u not in online]) for mid, users in pushes]
    pushes = [(mid, users) for mid, users in pushes if users]
    if pushes:
        outbox.send(svc.tasks, NOTIFY_OFFLINE_TASK, [pushes])  # one push-intent task per batch
    for cid in more:
        outbox.send(svc.tasks, FANOUT_TASK, [cid])


def _index(svc: Services, s: Session, walked: Mapping[str, list[str]]) -> None:
    """The walked messages' search index. Search must never hold up delivery: if it cannot
    be prepared (a text that no longer opens, say) the index task gets the work (outbox-backed,
    retried on its own) and the fan-out commits anyway. Nothing of the index is written until
    it is prepared, so no savepoint is needed (a failing statement is a database error, which
    fails and retries the whole fan-out like any other)."""
    if not any(walked.values()):
        return
    try:
        prepared = search_stage.prepare(svc, s, walked)
    except DBAPIError:
        raise  # the database's own trouble: the fan-out fails and is retried as a whole
    except Exception:
        logger.exception("fan-out: search index not written, left to the index task")
        for cid, ids in walked.items():
            search_stage.queue(s, cid, ids)
        return
    prepared.writes.apply(s.connection())


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


def publish(
    svc: Services, event_key: str, etype: str, data: dict[str, Any], users: list[str]
) -> None:
    """Append a durable event (domain/events.emit) to each user's stream once; mark it done."""
    event_log(svc).append_once(event_key, etype, data, users)
    with svc.Session.begin() as s:
        outbox.mark_done(s, [event_key], PUBLISH_TASK)
