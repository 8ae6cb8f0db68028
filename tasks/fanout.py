"""Stage 2: fan messages out to every member's event stream, in seq order, exactly once.

Thin: the conversation id in, the walk in domain/fanout.py (which records the stage done for
each message it delivers). The moderate stage runs the same walk inline, so this task runs for
re-runs and for messages that became ready while another was being moderated.
"""

from __future__ import annotations

from typing import Any

from celery import shared_task

from core.services import services
from domain import fanout
from domain.events import PUBLISH_TASK
from tasks.retry import PIPELINE


@shared_task(name=fanout.FANOUT_TASK, **PIPELINE)
def fanout_conversation(conversation_id: str) -> None:
    """Fan out every message of the conversation that is ready."""
    fanout.drain(services(), conversation_id)


@shared_task(name=PUBLISH_TASK, **PIPELINE)
def publish_event(event_key: str, etype: str, data: dict[str, Any], users: list[str]) -> None:
    """Append a durable event (edit, delete, reaction, receipt...) to each user's stream once."""
    fanout.publish(services(), event_key, etype, data, users)
