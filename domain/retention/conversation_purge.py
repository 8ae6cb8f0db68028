"""Deleting a whole conversation: its keys are shredded in the request (see shredding.py), then
this job deletes its files and rows in batches, with progress.

Safe to run again after a crash: each batch deletes what is still there.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from core.services import Services
from domain import jobs
from domain.principals import Principal
from domain.retention.deleting import delete_attachment_files, delete_messages, rowcount
from domain.retention.shredding import forget_keys, shred_conversation_keys
from domain.search import index as search_index
from models import (
    Attachment,
    Conversation,
    DeliveryCursor,
    Job,
    Message,
    Notification,
    Participant,
)

logger = logging.getLogger(__name__)

DELETE_CONVERSATION_TASK = "tasks.retention.delete_conversation"


def conversation_size(session: Session, cid: str) -> int:
    msgs = session.scalar(
        select(func.count()).select_from(Message).where(Message.conversation_id == cid)
    )
    atts = session.scalar(
        select(func.count()).select_from(Attachment).where(Attachment.conversation_id == cid)
    )
    return int(msgs or 0) + int(atts or 0)


def purge_conversation(svc: Services, cid: str, progress: jobs.Progress) -> int:
    """Delete a deleted conversation's rows and files in batches; returns items deleted."""
    batch = svc.settings.retention_batch
    done = 0
    while True:
        with svc.ReadSession() as s:
            atts = list(
                s.scalars(select(Attachment).where(Attachment.conversation_id == cid).limit(batch))
            )
        if not atts:
            break
        delete_attachment_files(svc, atts)
        with svc.Session.begin() as s:
            gone = s.execute(delete(Attachment).where(Attachment.id.in_([a.id for a in atts])))
            done += rowcount(gone)
        progress(done)
        if len(atts) < batch:
            break
    from domain import attachments as files

    store = files.storage_for(svc)
    for key in list(store.keys(f"attachments/{cid}/")):  # stray variants a media run left
        store.delete(key)
    with svc.Session.begin() as s:  # its keys are shredded: its whole index goes at once
        search_index.drop_conversation(s, cid)
    while True:
        with svc.Session.begin() as s:
            ids = list(
                s.scalars(select(Message.id).where(Message.conversation_id == cid).limit(batch))
            )
            done += delete_messages(svc, s, ids)[0]
        progress(done)
        if len(ids) < batch:
            break
    with svc.Session.begin() as s:
        s.execute(delete(Notification).where(Notification.conversation_id == cid))
        late_keys = shred_conversation_keys(s, cid)  # made by a post racing the delete
        s.execute(delete(Participant).where(Participant.conversation_id == cid))
        s.execute(delete(DeliveryCursor).where(DeliveryCursor.conversation_id == cid))
        s.execute(delete(Conversation).where(Conversation.id == cid))
    forget_keys(svc, late_keys)
    logger.info("conversation purged", extra={"conversation_id": cid, "items": done})
    return done


def _size(svc: Services, session: Session, job: Job) -> int:
    return conversation_size(session, job.params["conversation_id"])


def _work(svc: Services, job: Job, progress: jobs.Progress) -> Mapping[str, Any]:
    return {"deleted": purge_conversation(svc, job.params["conversation_id"], progress)}


CONVERSATION_DELETE = jobs.JobKind("conversation_delete", DELETE_CONVERSATION_TASK, _size, _work)


def start_conversation_purge(session: Session, who: Principal, cid: str) -> Job:
    """Queue the job that purges a conversation just marked deleted (caller's transaction)."""
    return jobs.start(session, CONVERSATION_DELETE, {"conversation_id": cid}, who.label)
