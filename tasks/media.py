"""Media stage on the "media" queue: thin, ids in. The stage itself (spool → variants →
ready | rejected, idempotent) is domain/attachments/processing.py; the image work is
storage/imaging.py.
"""

from __future__ import annotations

from typing import Any

from celery import shared_task

from core.services import services
from domain import attachments as atts
from domain.attachments import processing
from tasks.retry import PIPELINE, TEMPORARY

# Storage hiccups (disk full, S3 5xx, network: OSError, StorageUnavailable) are temporary too.
MEDIA_RETRY: dict[str, Any] = {**PIPELINE, "autoretry_for": (*TEMPORARY, OSError)}


@shared_task(name=atts.MEDIA_TASK, **MEDIA_RETRY)
def process_attachment(attachment_id: str) -> None:
    """Make the upload's variants (only those missing), then mark it ready or rejected."""
    processing.process(services(), attachment_id)
