"""Data lifecycle jobs on the "maintenance" queue: the retention purge (celery beat), deleting a
conversation, and GDPR export and erasure.

Thin tasks: ids in, rules in domain/retention.py and domain/gdpr.py. A job is claimed by
compare-and-set, so a duplicate delivery (the outbox sweeper re-sending, a redelivery after a
worker died) runs it once; a claim whose holder stopped reporting progress for
`STALE_CLAIM` is taken over. Every step is idempotent, so a takeover finishes the work.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from datetime import timedelta
from typing import Any

from celery import signals
from sqlalchemy import or_, update

from celery_config import celery_app
from core.ids import utcnow
from core.services import Services, services
from domain import gdpr, outbox, retention
from domain.errors import NotFound
from models import Job
from tasks.retry import PIPELINE, TEMPORARY

logger = logging.getLogger(__name__)

STALE_CLAIM = timedelta(minutes=2)
LONG: dict[str, Any] = {**PIPELINE, "soft_time_limit": 3500, "time_limit": 3600}


@celery_app.task(name=retention.PURGE_TASK, **LONG)
def purge() -> dict[str, Any]:
    """Hide expired messages, delete what is past the grace period, drop expired exports."""
    return retention.run(services()).as_dict()


def _progress(job_id: str, **values: Any) -> None:
    values = {"updated_at": utcnow(), **values}  # updated_at doubles as the claim's heartbeat
    with services().Session.begin() as s:
        s.execute(update(Job).where(Job.id == job_id).values(**values))


def _claim(svc: Services, job_id: str, task: str) -> Job | None:
    """The job if this run may work on it now; marks its outbox row done (from here on the
    broker's redelivery, not the sweeper, covers a crash)."""
    now = utcnow()
    with svc.Session.begin() as s:
        outbox.mark_done(s, [job_id], task)
        claimed = s.execute(
            update(Job)
            .where(
                Job.id == job_id,
                or_(
                    Job.state == "queued",
                    (Job.state == "running") & (Job.updated_at < now - STALE_CLAIM),
                ),
            )
            .values(state="running", updated_at=now)
        )
        if not getattr(claimed, "rowcount", 0):
            logger.info("job %s not claimed: missing, finished or running elsewhere", job_id)
            return None
        return s.get(Job, job_id)


@contextmanager
def _failing_as_recorded(job_id: str) -> Iterator[None]:
    """Temporary faults retry the task; anything else fails the job with its reason."""
    try:
        yield
    except TEMPORARY:
        with suppress(*TEMPORARY):  # let the retry claim it again at once
            _progress(job_id, updated_at=utcnow() - STALE_CLAIM)
        raise
    except NotFound as exc:
        _progress(job_id, state="failed", error=exc.detail)
    except Exception as exc:
        logger.exception("job %s failed", job_id)
        _progress(job_id, state="failed", error=f"{type(exc).__name__}: {exc}"[:500])


def _reporter(job_id: str, total: int) -> Callable[[int], None]:
    return lambda done: _progress(job_id, done=min(done, total))


@celery_app.task(name=retention.DELETE_CONVERSATION_TASK, **LONG)
def delete_conversation(job_id: str) -> None:
    """Purge a deleted conversation's rows and files (its keys were shredded already)."""
    svc = services()
    job = _claim(svc, job_id, retention.DELETE_CONVERSATION_TASK)
    if job is None:
        return
    cid = job.params["conversation_id"]
    with _failing_as_recorded(job_id):
        with svc.ReadSession() as s:
            total = retention.conversation_size(s, cid)
        _progress(job_id, total=total)
        done = retention.purge_conversation(svc, cid, _reporter(job_id, total))
        _progress(job_id, state="done", done=total, result={"deleted": done})


@celery_app.task(name=gdpr.EXPORT_TASK, **LONG)
def export_user(job_id: str) -> None:
    """Build a user's export zip, sealed into storage."""
    svc = services()
    job = _claim(svc, job_id, gdpr.EXPORT_TASK)
    if job is None:
        return
    user_id = job.params["user_id"]
    with _failing_as_recorded(job_id):
        with svc.ReadSession() as s:
            total = gdpr.export_size(s, user_id)
        _progress(job_id, total=total, done=0)
        result = gdpr.build_export(svc, job_id, user_id, _reporter(job_id, total))
        _progress(job_id, state="done", done=total, result=result)


@celery_app.task(name=gdpr.ERASE_TASK, **LONG)
def erase_user(job_id: str) -> None:
    """Erase a user (policy in docs/retention.md)."""
    svc = services()
    job = _claim(svc, job_id, gdpr.ERASE_TASK)
    if job is None:
        return
    with _failing_as_recorded(job_id):
        with svc.ReadSession() as s:
            total = gdpr.export_size(s, job.params["user_id"])
        _progress(job_id, total=total, done=0)
        counts = gdpr.erase_user(svc, job, _reporter(job_id, total))
        with svc.Session.begin() as s:
            row = s.get(Job, job_id)
            assert row is not None
            gdpr.finish_erase(s, row, counts)
            row.state, row.done, row.updated_at = "done", total, utcnow()
        logger.info("user erased", extra={"job_id": job_id, **counts})


_forgetter_pid: int | None = None


@signals.task_prerun.connect
def _follow_shredded_keys(**_: Any) -> None:
    """Each worker process drops keys other processes shred from its key cache: the listener
    starts with the process's first task, in the app the task runs in."""
    global _forgetter_pid
    if _forgetter_pid == os.getpid():
        return
    _forgetter_pid = os.getpid()
    from flask import current_app, has_app_context

    from celery_config import flask_app

    app = current_app if has_app_context() else flask_app()  # as AppContextTask chooses
    retention.KeyForgetter(app.extensions["parley"]).start()
