"""Fan-out: every ready message reaches every member's event stream, in seq order, exactly once.

`drain_many` walks a batch of conversations in one transaction: under locks on their delivery
cursors it takes the messages after each cursor in seq order, stops at the first one still in
moderation (its moderating task resumes the walk), and appends `message.new` to each member's
stream through `EventLog.append_many` (one round trip for the batch), so a re-run adds
nothing. The same transaction moves the cursors and writes the search index. Redis effects
happen before the commit: a crash after them and before the commit repeats them harmlessly; a
crash before them loses nothing because the cursors did not move. On SQLite, whose one write
lock every POST waits for, the walk and the append come before the lock, and the transaction
records what of the walk is still as it was read (a conversation with a changed row is walked
again under the lock). The walk itself is domain/fanout_walk.py. Run by tasks/fanout.py and,
inline, by the moderation stage (domain/moderation_stage.py)."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, cast

from sqlalchemy import String, Table, bindparam, func, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from core.events import PRESENCE_PREFIX, EventLog
from core.services import Services
from domain import outbox
from domain.events import PUBLISH_TASK
from domain.fanout_walk import Walk, as_read, walk_after_cursors
from domain.messages import MODERATE_TASK
from domain.search import stage as search_stage
from models import DeliveryCursor, Message
from models.db import connection_of

logger = logging.getLogger(__name__)

FANOUT_TASK = "tasks.fanout.fanout_conversation"
NOTIFY_OFFLINE_TASK = "tasks.push.notify_offline"


def event_log(svc: Services) -> EventLog:
    return EventLog(svc.redis, svc.settings.stream_maxlen)


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
    """Fan out every ready message of these conversations, in seq order within each, with one
    write transaction and one Redis round trip; send the push intents of those who may be
    away, and a fan-out task for each conversation whose backlog did not fit in the batch.

    PostgreSQL locks the delivery cursors in conversation-id order, so two drains over
    overlapping sets never deadlock: the later one waits, then finds the cursors moved. SQLite
    has one write lock for the whole database, which every POST waits for: there the walk and
    its Redis round trip happen before the lock (`_walked_then_recorded`). `waited_ms`: the
    moderation batch's queue wait, recorded as the pipeline's lag (LAG_KEY)."""
    cids = sorted(set(conversation_ids))
    if cids and svc.dialect == "sqlite":
        cids = _walked_then_recorded(svc, cids, waited_ms)
    if not cids:
        return
    with svc.Session.begin() as s:
        walk = walk_after_cursors(connection_of(s), cids, lock=svc.dialect != "sqlite")
        event_log(svc).append_many(walk.events)  # before the commit: a crash in between repeats it
        _record(svc, s, walk)
    _finish(svc, walk, waited_ms)


def _walked_then_recorded(svc: Services, cids: list[str], waited_ms: float | None) -> list[str]:
    """SQLite: walk and append before taking the write lock, then, under it, record what of
    the walk is still as it was read (`fanout_walk.as_read`). Returns the conversations with
    a changed row, for a walk under the lock.

    Appending before the lock is safe because every walk appends a run of messages that
    starts right after a committed cursor, in seq order, and the streams skip what they
    already hold: a walk that read an older cursor appends nothing out of order, and what of
    it is not recorded is what another walk appends (or has appended) anyway."""
    walk, index_ahead = _walked_before_the_lock(svc, cids)
    return _recorded(svc, walk, index_ahead, waited_ms) if walk.seen else []


def _walked_before_the_lock(
    svc: Services, cids: list[str]
) -> tuple[Walk, search_stage.Prepared | None]:
    """The walk, appended, and its search index prepared (None: it could not be, and is
    prepared under the lock)."""
    with svc.ReadSession() as rs:
        conn = connection_of(rs)
        walk = walk_after_cursors(conn, cids, lock=False)
        index_ahead = None
        if walked := walk.walked_by():
            try:
                index_ahead = search_stage.prepare_ahead(svc, conn, walked)
            except Exception:  # prepared again under the lock, which handles what fails
                logger.debug("fan-out: search index not prepared ahead", exc_info=True)
    event_log(svc).append_many(walk.events)
    return walk, index_ahead


def _recorded(
    svc: Services, walk: Walk, index_ahead: search_stage.Prepared | None, waited_ms: float | None
) -> list[str]:
    """Under the write lock: record what of `walk` is still as read (see
    `fanout_walk.as_read`), with the index prepared ahead if it still applies to exactly
    that; the conversations to walk again under the lock."""
    walked = walk.walked_by()
    with svc.Session.begin() as s:
        walk, changed = as_read(connection_of(s), walk)
        if walk.seen:
            # The index moves with the cursors (docs/search.md): prepared writes only for
            # exactly the rows recorded here, and only onto the rows they were planned on.
            if index_ahead is not None and (
                walk.walked_by() != walked
                or not search_stage.still_as_prepared(connection_of(s), index_ahead)
            ):
                index_ahead = None
            _record(svc, s, walk, index_ahead)
    _finish(svc, walk, waited_ms)
    return sorted(changed)


def _record(
    svc: Services, s: Session, walk: Walk, index_ahead: search_stage.Prepared | None = None
) -> None:
    """In the caller's transaction: the delivered messages' state, the cursors, the search
    index (`index_ahead` when given: prepared before the lock, still applying) and the
    moderate tasks' outbox rows."""
    conn = connection_of(s)
    if delivered := walk.delivered:
        conn.execute(_DELIVERED, {"ids": delivered})
    if moves := walk.moves():
        conn.execute(_MOVE, moves)
    # The search index moves with the cursors, after the streams (docs/search.md); the
    # messages' rows and the cursors are written first, in the order an edit takes its
    # locks. The conversation's own row is not written: posts reserve their seqs there.
    if index_ahead is not None:
        index_ahead.writes.apply(conn)
    else:
        _index(svc, s, walk.walked_by())
    outbox.mark_done(s, walk.done, MODERATE_TASK)


def _finish(svc: Services, walk: Walk, waited_ms: float | None) -> None:
    """After the commit: the log lines, the walked marks, the push intents of those who are
    not online now, and a fan-out task for each conversation with more waiting."""
    walked = walk.walked_by()
    for move in walk.moves():
        cid = move["cid"]
        logger.info(
            "fanned out %d message(s) to %d member(s)",
            len(walked[cid]),
            walk.members[cid],
            extra={"conversation_id": cid, "seq": move["seq"]},
        )
    # Who is online now gets the message live: only the others are worth a push task (which
    # checks presence again before it records anything).
    online = _mark_walked(svc, walk.done, waited_ms, (u for _, us in walk.pushes for u in us))
    pushes = [(mid, [u for u in users if u not in online]) for mid, users in walk.pushes]
    pushes = [(mid, users) for mid, users in pushes if users]
    if pushes:
        outbox.send(svc.tasks, NOTIFY_OFFLINE_TASK, [pushes])  # one push-intent task per batch
    for cid in walk.more:
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


def publish(
    svc: Services, event_key: str, etype: str, data: dict[str, Any], users: list[str]
) -> None:
    """Append a durable event (domain/events.emit) to each user's stream once; mark it done."""
    event_log(svc).append_once(event_key, etype, data, users)
    with svc.Session.begin() as s:
        outbox.mark_done(s, [event_key], PUBLISH_TASK)
