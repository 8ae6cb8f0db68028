"""Stage: write the blind search index of moderated messages (docs/search.md).

Thin: ids in, the rows loaded fresh and their tokens replaced in domain/search/stage.py, which
records the task done. The fan-out indexes what it walks itself; this task is for re-runs and
the rows an upgrade queued (docs/search.md).
"""

from __future__ import annotations

from celery import shared_task

from core.services import services
from domain.search import stage
from tasks.retry import PIPELINE


@shared_task(name=stage.INDEX_TASK, **PIPELINE)
def index_messages(conversation_id: str, message_ids: list[str]) -> None:
    """Replace the tokens of these messages; a re-run writes the same rows."""
    stage.index_messages(services(), conversation_id, message_ids)
