"""Fan-out: every ready message reaches every member's event stream, in seq order, exactly once.

`drain` walks a conversation: under a lock on its delivery cursor it takes the messages after
the cursor in seq order, stops at the first one still in moderation (its own moderate task
resumes the walk), and appends `message.new` to each member's stream through
`EventLog.append_once`, so a re-run adds nothing. Redis effects happen before the commit: a
crash after them and before the commit repeats them harmlessly; a crash before them loses
nothing because the cursor did not move. Run by tasks/fanout.py and, inline, by the moderation
stage (domain/moderation_stage.py).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Row, select

from core.events import DONE_PREFIX, EventLog, online_among
from core.ids import utcnow
from core.services import Services
from domain import outbox
from domain.events import PUBLISH_TASK
from domain.messages import MODERATE_TASK
from models import Conversation, DeliveryCursor, Message, Participant

logger = logging.getLogger(__name__)

FANOUT_TASK = "tasks.fanout.fanout_conversation"
NOTIFY_OFFLINE_TASK = "tasks.push.notify_offline"
BATCH = 200


def event_log(svc: Services) -> EventLog:
    return EventLog(svc.redis, svc.settings.stream_maxlen)


def new_event_key(message_id: str) -> str:
    """The key under which a message's `message.new` is appended once per member."""
    return f"msg:{message_id}:new"


def fanned_out(svc: Services, message_id: str) -> bool:
    """Whether the message's `message.new` is in the streams (its done-set entry exists)."""
    return bool(svc.redis.exists(DONE_PREFIX + new_event_key(message_id)))


def drain(svc: Services, conversation_id: str) -> None:
    """Fan out every message of the conversation that is ready, in seq order; send the push
    intents of those who may be away, and a fan-out task for what did not fit in the batch."""
    log = event_log(svc)
    pushes: list[tuple[str, list[str]]] = []  # (message id, users to consider for a push)
    with svc.Session.begin() as s:
        stmt = select(DeliveryCursor).where(DeliveryCursor.conversation_id == conversation_id)
        if svc.dialect != "sqlite":  # SQLite's BEGIN IMMEDIATE already serializes writers
            stmt = stmt.with_for_update()
        cursor = s.scalar(stmt)
        if cursor is None:
            logger.warning("fan-out: conversation gone", extra={"conversation_id": conversation_id})
            return
        conv = s.get(Conversation, conversation_id)
        assert conv is not None
        # Plain rows: a 1,000-member group would otherwise build 1,000 ORM objects per batch.
        members = list(
            s.execute(
                select(
                    Participant.user_id, Participant.notification_level, Participant.muted_until
                ).where(
                    Participant.conversation_id == conversation_id, Participant.left_at.is_(None)
                )
            )
        )
        member_ids = [p.user_id for p in members]
        batch = list(
            s.scalars(
                select(Message)
                .where(Message.conversation_id == conversation_id, Message.seq > cursor.fanout_seq)
                .order_by(Message.seq)
                .limit(BATCH)
            )
        )
        done: list[str] = []
        for msg in batch:
            if msg.moderation_action is None:
                break  # still in moderation: its own moderate task resumes the walk
            data = {"conversation_id": conversation_id, "message_id": msg.id, "seq": msg.seq}
            if msg.state in ("held", "rejected"):
                if msg.sender_id:
                    log.append_once(
                        f"msg:{msg.id}:{msg.state}", "message.updated", data, [msg.sender_id]
                    )
            else:
                log.append_once(new_event_key(msg.id), "message.new", data, member_ids)
                msg.state = "delivered"
                conv.last_message_id = msg.id
                pushes.append((msg.id, _push_candidates(msg, members)))
            cursor.fanout_seq = msg.seq
            done.append(msg.id)
        outbox.mark_done(s, done, MODERATE_TASK)
        more = len(batch) == BATCH and len(done) == BATCH
    if done:
        logger.info(
            "fanned out %d message(s) to %d member(s)",
            len(done),
            len(member_ids),
            extra={"conversation_id": conversation_id, "seq": cursor.fanout_seq},
        )
    # Who is online now gets the message live: only the others are worth a push task (which
    # checks presence again before it records anything).
    online = online_among(svc.redis, (u for _, users in pushes for u in users))
    pushes = [(mid, [u for u in users if u not in online]) for mid, users in pushes]
    pushes = [(mid, users) for mid, users in pushes if users]
    if pushes:
        outbox.send(svc.tasks, NOTIFY_OFFLINE_TASK, [pushes])  # one push-intent task per batch
    if more:
        outbox.send(svc.tasks, FANOUT_TASK, [conversation_id])


def _push_candidates(msg: Message, members: Sequence[Row[str, str, datetime | None]]) -> list[str]:
    """Recipients who asked to hear about messages now; who is offline is decided at push time."""
    now: datetime = utcnow()
    return [
        p.user_id
        for p in members
        if p.user_id != msg.sender_id
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
