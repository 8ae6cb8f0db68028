"""Key rotation as a background job with progress.

Step 1 re-wraps every data key under the newest master key (cheap: text is untouched).
Step 2, with `--reencrypt`, gives each conversation a fresh data key and re-seals its messages
and edit history in batches. Every ciphertext names its own key, so reads work throughout, and
each row is updated only if its key is still the old one (an edit meanwhile wins).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

from sqlalchemy import func, select, update

from celery_config import celery_app
from core.ids import utcnow
from core.services import services
from domain import outbox
from domain.keys import create_data_key, rewrap_batch, stale_key_count
from domain.messages import edit_aad, message_aad
from models import Conversation, Job, Message, MessageEdit
from tasks.retry import PIPELINE

logger = logging.getLogger(__name__)

TASK = "tasks.rotation.rotate_keys"


def start_rotation(*, reencrypt: bool, actor: str) -> str:
    svc = services()
    with svc.Session.begin() as s:
        job = Job(kind="key_rotation", params={"reencrypt": reencrypt}, created_by=actor)
        s.add(job)
        s.flush()
        outbox.add(s, TASK, [job.id], ref_id=job.id)
        return job.id


def follow(job_id: str, poll_s: float = 0.5, timeout_s: float = 3600) -> Iterator[str]:
    svc = services()
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        with svc.ReadSession() as s:
            job = s.get(Job, job_id)
            assert job is not None
            line = f"{job.state}: {job.done}/{job.total}"
            if line != last:
                yield line
                last = line
            if job.state in ("done", "failed"):
                if job.error:
                    yield f"error: {job.error}"
                return
        time.sleep(poll_s)
    yield "still running; check again later"


def _progress(job_id: str, **values: object) -> None:
    with services().Session.begin() as s:
        s.execute(update(Job).where(Job.id == job_id).values(updated_at=utcnow(), **values))


@celery_app.task(name=TASK, soft_time_limit=3500, time_limit=3600, **PIPELINE)
def rotate_keys(job_id: str) -> None:
    svc = services()
    batch = svc.settings.rotation_batch
    with svc.ReadSession() as s:
        job = s.get(Job, job_id)
        if job is None or job.state == "done":
            return
        reencrypt = bool(job.params.get("reencrypt"))
        total = stale_key_count(svc, s)
        if reencrypt:
            total += (
                s.scalar(
                    select(func.count()).select_from(Message).where(Message.text_ct.is_not(None))
                )
                or 0
            )
    _progress(job_id, state="running", total=total, done=0)
    done = 0
    while True:
        with svc.Session.begin() as s:
            n = rewrap_batch(svc, s, batch)
        done += n
        _progress(job_id, done=done)
        if n < batch:
            break
    if reencrypt:
        with svc.ReadSession() as s:
            conv_ids = list(s.scalars(select(Conversation.id).order_by(Conversation.id)))
        for cid in conv_ids:
            done = _reencrypt_conversation(cid, job_id, done, batch)
    with svc.Session.begin() as s:
        outbox.mark_done(s, [job_id], TASK)
    _progress(job_id, state="done", done=done)
    logger.info("key rotation %s finished: %d item(s)", job_id, done)


def _reencrypt_conversation(cid: str, job_id: str, done: int, batch: int) -> int:
    svc = services()
    with svc.Session.begin() as s:
        conv = s.get(Conversation, cid)
        if conv is None:
            return done
        new_key = create_data_key(svc, s, cid)
        conv.data_key_id = new_key  # new text uses the new key from now on
    while True:
        with svc.Session.begin() as s:
            rows = s.execute(
                select(Message.id, Message.key_id, Message.text_ct)
                .where(
                    Message.conversation_id == cid,
                    Message.key_id.is_not(None),
                    Message.key_id != new_key,
                )
                .limit(batch)
            ).all()
            for mid, old_key, blob in rows:
                assert old_key is not None and blob is not None  # filtered by the query
                text = svc.keyring.open_text(old_key, blob, message_aad(mid))
                s.execute(
                    update(Message)
                    .where(Message.id == mid, Message.key_id == old_key)
                    .values(
                        key_id=new_key,
                        text_ct=svc.keyring.seal_text(new_key, text, message_aad(mid)),
                    )
                )
        done += len(rows)
        _progress(job_id, done=done)
        if len(rows) < batch:
            break
    while True:
        with svc.Session.begin() as s:
            edits = s.execute(
                select(
                    MessageEdit.id, MessageEdit.message_id, MessageEdit.key_id, MessageEdit.text_ct
                )
                .join(Message, Message.id == MessageEdit.message_id)
                .where(
                    Message.conversation_id == cid,
                    MessageEdit.key_id.is_not(None),
                    MessageEdit.key_id != new_key,
                )
                .limit(batch)
            ).all()
            for eid, mid, old_key, blob in edits:
                assert old_key is not None and blob is not None  # filtered by the query
                text = svc.keyring.open_text(old_key, blob, edit_aad(mid))
                s.execute(
                    update(MessageEdit)
                    .where(MessageEdit.id == eid)
                    .values(
                        key_id=new_key, text_ct=svc.keyring.seal_text(new_key, text, edit_aad(mid))
                    )
                )
        if len(edits) < batch:
            break
    return done
