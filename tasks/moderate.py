"""Stage 1: moderate a posted message, then run the fan-out stage for its conversation.

Fan-out runs in the same task execution (one broker hop per message instead of two); it is
still its own stage in tasks/fanout.py, with its own task for re-runs and for messages that
become ready while another is being moderated.
"""

from __future__ import annotations

import logging

from sqlalchemy import select

from celery_config import celery_app
from core import metrics
from core.services import services
from domain import flood
from domain.messages import message_aad
from models import Conversation, Message
from moderation import moderate, policy_for
from tasks.fanout import drain
from tasks.retry import PIPELINE

logger = logging.getLogger(__name__)

NAME = "tasks.moderate.moderate_message"


def masked_spans(text: str, masked: str) -> list[list[int]]:
    """Offsets where the verdict changed the text: exactly what recipients must not see."""
    spans: list[list[int]] = []
    start = None
    for i, (a, b) in enumerate(zip(text, masked, strict=False)):
        if a != b and start is None:
            start = i
        elif a == b and start is not None and not a.isspace():
            spans.append([start, i])
            start = None
    if start is not None:
        spans.append([start, len(text)])
    return spans


@celery_app.task(name=NAME, **PIPELINE)
def moderate_message(message_id: str) -> None:
    """Record the verdict once; a re-run (redelivery, sweeper) skips straight to fan-out."""
    svc = services()
    verdict_made: tuple[str, list[str]] | None = None
    with svc.Session.begin() as s:
        msg = s.get(Message, message_id)
        if msg is None:
            logger.warning("moderate: message gone", extra={"message_id": message_id})
            return
        conversation_id = msg.conversation_id
        if msg.moderation_action is None:
            conv_type = s.scalar(
                select(Conversation.type).where(Conversation.id == conversation_id)
            )
            text = ""
            if msg.text_ct is not None and msg.key_id is not None:
                text = svc.keyring.open_text(msg.key_id, msg.text_ct, message_aad(msg.id))
            verdict = moderate(
                text, policy_for(conv_type or "group", svc.settings.moderation_overrides)
            )
            action, reason = verdict.action, verdict.reason
            labels: list[str] = list(verdict.labels)
            if msg.sender_id and flood.record_and_check(svc, msg.sender_id, text, conversation_id):
                labels.append(flood.LABEL)
                if action in ("allow", "mask"):
                    action, reason = "hold", "the same text was sent to many conversations"
            msg.moderation_action = action
            msg.moderation_labels = sorted(labels)
            msg.moderation_spans = masked_spans(text, verdict.masked)
            if action in ("hold", "reject"):
                msg.state = "held" if action == "hold" else "rejected"
                msg.moderation_reason = reason[:300]
            logger.info(
                "moderated %s",
                action,
                extra={"message_id": message_id, "conversation_id": conversation_id},
            )
            verdict_made = (action, msg.moderation_labels)
    if verdict_made is not None:  # counted once committed, so a retried run counts once
        metrics.moderation_verdict(*verdict_made)
    drain(conversation_id)
