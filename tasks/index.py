"""Stage: write the blind search index of moderated messages (docs/search.md).

Thin: ids in, the rows loaded fresh and their tokens replaced in domain/search/index.py, which
records the stage done. Sent (outbox-backed) by the moderation stage once its verdicts commit.
"""

from __future__ import annotations

from celery import shared_task

from core.services import services
from domain.search import index
from tasks.retry import PIPELINE


@shared_task(name=index.INDEX_TASK, **PIPELINE)
def index_messages(conversation_id: str, message_ids: list[str]) -> None:
    """Replace the tokens of these messages; a re-run writes the same rows."""
    index.index_messages(services(), conversation_id, message_ids)
