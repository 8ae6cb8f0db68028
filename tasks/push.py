"""Stage 3: push intent for recipients not connected right now.

This stage records the in-app notification (collapsed per conversation: one unread row counts
the messages) for each recipient with no live connection. Delivery to Web Push, webhooks and
e-mail builds on these records (issue #7).
"""

from __future__ import annotations

import logging

from sqlalchemy import select

from celery_config import celery_app
from core.events import is_online
from core.services import services
from models import Message, Notification
from tasks.retry import PIPELINE

logger = logging.getLogger(__name__)


@celery_app.task(name="tasks.push.notify_offline", **PIPELINE)
def notify_offline(message_id: str, user_ids: list[str]) -> None:
    svc = services()
    offline = [u for u in user_ids if not is_online(svc.redis, u)]
    if not offline:
        return
    with svc.Session.begin() as s:
        msg = s.get(Message, message_id)
        if msg is None or msg.deleted_at is not None:
            return
        unread = {
            n.user_id: n
            for n in s.scalars(
                select(Notification).where(
                    Notification.user_id.in_(offline),
                    Notification.kind == "message",
                    Notification.conversation_id == msg.conversation_id,
                    Notification.read_at.is_(None),
                )
            )
        }
        for uid in offline:
            note = unread.get(uid)
            if note is None:
                s.add(
                    Notification(
                        user_id=uid,
                        kind="message",
                        message_id=message_id,
                        conversation_id=msg.conversation_id,
                    )
                )
            elif note.message_id != message_id and (note.message_id or "") < message_id:
                note.count += 1  # collapse: "3 new messages"; ULIDs order by time
                note.message_id = message_id
    logger.info(
        "push intent for %d offline recipient(s)", len(offline), extra={"message_id": message_id}
    )
