"""Data lifecycle jobs on the "maintenance" queue: the retention purge (celery beat), deleting a
conversation, and GDPR export and erasure.

Thin tasks: ids in, the job's lifecycle (claim, progress, failure, done) in domain/jobs.py, the
rules in domain/retention/ and domain/gdpr/.
"""

from __future__ import annotations

import os
from typing import Any

from celery import signals

from celery_config import celery_app
from core.services import services
from domain import jobs
from domain.gdpr.erasure import ERASE_JOB
from domain.gdpr.export import EXPORT_JOB
from domain.retention import purge as retention_purge
from domain.retention.conversation_purge import CONVERSATION_DELETE
from domain.retention.key_forgetter import KeyForgetter
from tasks.retry import PIPELINE, TEMPORARY

LONG: dict[str, Any] = {**PIPELINE, "soft_time_limit": 3500, "time_limit": 3600}


@celery_app.task(name=retention_purge.PURGE_TASK, **LONG)
def purge() -> dict[str, Any]:
    """Hide expired messages, delete what is past the grace period, drop expired exports."""
    return retention_purge.run(services()).as_dict()


@celery_app.task(name=CONVERSATION_DELETE.task, **LONG)
def delete_conversation(job_id: str) -> None:
    """Purge a deleted conversation's rows and files (its keys were shredded already)."""
    jobs.run(services(), job_id, CONVERSATION_DELETE, retryable=TEMPORARY)


@celery_app.task(name=EXPORT_JOB.task, **LONG)
def export_user(job_id: str) -> None:
    """Build a user's export zip, sealed into storage."""
    jobs.run(services(), job_id, EXPORT_JOB, retryable=TEMPORARY)


@celery_app.task(name=ERASE_JOB.task, **LONG)
def erase_user(job_id: str) -> None:
    """Erase a user (policy in docs/retention.md)."""
    jobs.run(services(), job_id, ERASE_JOB, retryable=TEMPORARY)


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
    KeyForgetter(app.extensions["parley"]).start()
