"""Stage 1: moderate a posted message, then run the fan-out stage for its conversation.

Thin: ids in, the batch and its rules in domain/moderation_stage.py (text rules in
moderation/), the fan-out in domain/fanout.py, which records the stage done.
"""

from __future__ import annotations

from celery import shared_task

from core.services import services
from domain import moderation_stage
from domain.messages import MODERATE_TASK
from tasks.retry import PIPELINE


@shared_task(name=MODERATE_TASK, **PIPELINE)
def moderate_message(message_id: str, conversation_id: str | None = None) -> None:
    """Record verdicts once, then fan out; a message already done ends after one read."""
    svc = services()
    waiting_in = moderation_stage.conversation_to_moderate(svc, message_id, conversation_id)
    if waiting_in is not None:
        moderation_stage.moderate_and_fan_out(svc, waiting_in, message_id)
