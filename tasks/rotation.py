"""Key rotation on the "maintenance" queue: thin, the rules are in domain/rotation.py and the
job's lifecycle (claim, progress, failure, done) in domain/jobs.py."""

from __future__ import annotations

from celery import shared_task

from core.services import services
from domain import jobs
from domain.rotation import ROTATION
from tasks.retry import PIPELINE, TEMPORARY


@shared_task(name=ROTATION.task, soft_time_limit=3500, time_limit=3600, **PIPELINE)
def rotate_keys(job_id: str) -> None:
    """Re-wrap data keys under the newest master key (and re-seal text when asked)."""
    jobs.run(services(), job_id, ROTATION, retryable=TEMPORARY)
