"""Stage 3: push intent for recipients not connected right now.

This stage records the in-app notification (collapsed per conversation: one unread row counts
the messages) for each recipient with no live connection. Delivery to Web Push, webhooks and
e-mail builds on these records (issue #7).
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from celery_config import celery_app
from core.events import is_online
from core.services import services
from domain.conversations import unread_counts
from models import Message, Notification
from tasks.retry import PIPELINE, TEMPORARY

logger = logging.getLogger(__name__)


# A concurrent task inserted the same unread notification first: run again, it now updates.
PUSH_RETRY = {**PIPELINE, "autoretry_for": (*TEMPORARY, IntegrityError)}


@celery_app.task(name="tasks.push.notify_offline", **PUSH_RETRY)
def notify_offline(items: list[list[Any]]) -> None:
    """`items`: [message id, [user ids]] pairs from one fan-out batch, oldest first."""
    svc = services()
    online: dict[str, bool] = {}
    with svc.Session.begin() as s:
        for message_id, user_ids in items:
            for uid in user_ids:
                if uid not in online:
                    online[uid] = is_online(svc.redis, uid)
            _record(s, message_id, [u for u in user_ids if not online[u]])


def _record(s: Session, message_id: str, offline: list[str]) -> None:
    """Upsert the user's unread notification for the conversation; the count is derived from
    the read cursor, so re-runs and out-of-order batches give the same result."""
    if not offline:
        return
    msg = s.get(Message, message_id)
    if msg is None or msg.deleted_at is not None:
        return
    cid = msg.conversation_id
    unread = {
        n.user_id: n
        for n in s.scalars(
            select(Notification).where(
                Notification.user_id.in_(offline),
                Notification.kind == "message",
                Notification.conversation_id == cid,
                Notification.read_at.is_(None),
            )
        )
    }
    for uid in offline:
        count = max(1, unread_counts(s, uid, [cid]).get(cid, 0))
        note = unread.get(uid)
        if note is None:
            s.add(
                Notification(
                    user_id=uid,
                    kind="message",
                    message_id=message_id,
                    conversation_id=cid,
                    count=count,
                )
            )
        elif (note.message_id or "") <= message_id:
            note.message_id, note.count = message_id, count
    s.flush()
    logger.info(
        "push intent for %d offline recipient(s)", len(offline), extra={"message_id": message_id}
    )
