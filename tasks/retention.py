"""Data lifecycle jobs on the "maintenance" queue: the retention purge (celery beat), deleting a
conversation, and GDPR export and erasure.

Thin tasks: ids in, the job's lifecycle (claim, progress, failure, done) in domain/jobs.py, the
rules in domain/retention/ and domain/gdpr/.
"""

from __future__ import annotations

from typing import Any

from celery import shared_task

from core.services import services
from domain import jobs
from domain.gdpr.erasure import ERASE_JOB
from domain.gdpr.export import EXPORT_JOB
from domain.retention import purge as retention_purge
from domain.retention.conversation_purge import CONVERSATION_DELETE
from tasks.retry import PIPELINE, TEMPORARY

LONG: dict[str, Any] = {**PIPELINE, "soft_time_limit": 3500, "time_limit": 3600}


@shared_task(name=retention_purge.PURGE_TASK, **LONG)
def purge() -> dict[str, Any]:
    """Hide expired messages, delete what is past the grace period, drop expired exports."""
    return retention_purge.run(services()).as_dict()


@shared_task(name=CONVERSATION_DELETE.task, **LONG)
def delete_conversation(job_id: str) -> None:
    """Purge a deleted conversation's rows and files (its keys were shredded already)."""
    jobs.run(services(), job_id, CONVERSATION_DELETE, retryable=TEMPORARY)


@shared_task(name=EXPORT_JOB.task, **LONG)
def export_user(job_id: str) -> None:
    """Build a user's export zip, sealed into storage."""
    jobs.run(services(), job_id, EXPORT_JOB, retryable=TEMPORARY)


@shared_task(name=ERASE_JOB.task, **LONG)
def erase_user(job_id: str) -> None:
    """Erase a user (policy in docs/retention.md)."""
    jobs.run(services(), job_id, ERASE_JOB, retryable=TEMPORARY)
