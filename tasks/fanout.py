"""Stage 2: fan messages out to every member's event stream, in seq order, exactly once.

One task drains a conversation: under a lock on its delivery cursor it walks messages after
the cursor in seq order, stops at the first one still in moderation (its own task will resume
the walk), and appends `message.new` to each member's stream through `EventLog.append_once`, so
a re-run adds nothing. Redis effects happen before the commit: a crash after them and before
the commit repeats them harmlessly; a crash before them loses nothing because the cursor did
not move.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime

from celery import shared_task
from sqlalchemy import Row, select

from core.events import EventLog, online_among
from core.ids import utcnow
from core.services import services
from domain import outbox
from models import Conversation, DeliveryCursor, Message, Participant
from tasks.retry import PIPELINE

logger = logging.getLogger(__name__)

FANOUT_TASK = "tasks.fanout.fanout_conversation"
PUBLISH_TASK = "tasks.fanout.publish_event"
MODERATE_TASK = "tasks.moderate.moderate_message"
PUSH_TASK = "tasks.push.notify_offline"
BATCH = 200


def _event_log() -> EventLog:
    svc = services()
    return EventLog(svc.redis, svc.settings.stream_maxlen)


@shared_task(name=FANOUT_TASK, **PIPELINE)
def fanout_conversation(conversation_id: str) -> None:
    drain(conversation_id)


def drain(conversation_id: str) -> None:
    """Fan out every message that is ready, in seq order (called by the task and, inline, by
    the moderate stage so a message needs one task hop, not two)."""
    svc = services()
    log = _event_log()
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
        outbox.send(PUSH_TASK, [pushes])  # one push-intent task per batch
    if more:
        outbox.send(FANOUT_TASK, [conversation_id])


def new_event_key(message_id: str) -> str:
    """The key under which a message's `message.new` is appended once per member."""
    return f"msg:{message_id}:new"


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


@shared_task(name=PUBLISH_TASK, **PIPELINE)
def publish_event(event_key: str, etype: str, data: dict, users: list[str]) -> None:
    """Append a durable event (edit, delete, reaction, receipt...) to each user's stream once."""
    _event_log().append_once(event_key, etype, data, users)
    svc = services()
    with svc.Session.begin() as s:
        outbox.mark_done(s, [event_key], PUBLISH_TASK)
