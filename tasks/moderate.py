"""Stage 1: moderate posted messages, then run the fan-out stage for their conversations.

Thin: ids in, the batch and its rules in domain/moderation_stage.py (text rules in
moderation/), the fan-out in domain/fanout.py, which records the stage done.
"""

from __future__ import annotations

from collections.abc import Sequence

from celery import shared_task

from core.services import services
from domain import ingest_handoff, moderation_stage
from domain.messages import MODERATE_BATCH_TASK, MODERATE_TASK
from tasks.retry import PIPELINE


@shared_task(name=MODERATE_TASK, **PIPELINE)
def moderate_message(message_id: str, conversation_id: str | None = None) -> None:
    """One message's task (the outbox row's: re-sent by the sweeper, or a post with
    attachments)."""
    _moderate([(message_id, conversation_id)])


@shared_task(name=MODERATE_BATCH_TASK, **PIPELINE)
def moderate_messages(messages: Sequence[Sequence[str]]) -> None:
    """A group-commit batch's task: [message id, conversation id] of each of its posts, so a
    burst costs one task per batch rather than one per message."""
    _moderate([(mid, cid) for mid, cid in messages])


def _moderate(messages: list[tuple[str, str | None]]) -> None:
    """Record verdicts once, then fan out, for these messages and the posts handed over since
    the last task took them (domain/ingest_handoff.py); messages already done end after one
    Redis read."""
    svc = services()
    own = moderation_stage.still_to_moderate(svc, ingest_handoff.with_handed(svc, messages))
    if own:
        moderation_stage.moderate_and_fan_out(svc, own)
