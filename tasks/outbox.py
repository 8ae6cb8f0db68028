"""The outbox sweeper (celery beat): re-send work whose enqueue was lost, prune what is done."""

from __future__ import annotations

import logging
from datetime import timedelta

from celery import shared_task
from sqlalchemy import delete, func, select

from core.ids import utcnow
from core.services import services
from domain import outbox
from models import Outbox
from tasks.retry import PIPELINE

logger = logging.getLogger(__name__)

SWEEP_BATCH = 500
MAX_BACKOFF_STEPS = 6
KEEP_DONE = timedelta(days=1)


def due(row: Outbox, now_stale_base: float) -> bool:
    """Back off per attempt (stale, 2x, 4x...) so a slow backlog is not enqueued again and again."""
    last = row.dispatched_at or row.created_at
    wait = now_stale_base * (2 ** min(row.attempts, MAX_BACKOFF_STEPS))
    return (utcnow() - last).total_seconds() >= wait


@shared_task(name="tasks.outbox.sweep", **PIPELINE)
def sweep() -> int:
    svc = services()
    stale = svc.settings.outbox_stale_s
    cutoff = utcnow() - timedelta(seconds=stale)
    resent = 0
    with svc.Session.begin() as s:
        rows = s.scalars(
            select(Outbox)
            .where(
                Outbox.done_at.is_(None),
                func.coalesce(Outbox.dispatched_at, Outbox.created_at) < cutoff,
            )
            .order_by(Outbox.id)
            .limit(SWEEP_BATCH)
        ).all()
        for row in rows:
            if due(row, stale) and outbox.send(svc.tasks, row.task, row.args):
                row.dispatched_at = utcnow()
                row.attempts += 1
                resent += 1
        s.execute(delete(Outbox).where(Outbox.done_at < utcnow() - KEEP_DONE))
    if resent:
        logger.warning("outbox sweep re-sent %d task(s) not done after %ss", resent, stale)
    return resent
