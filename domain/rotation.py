"""Key rotation, run as a background job with progress (domain/jobs.py).

Step 1 re-wraps every data key under the newest master key (cheap: text is untouched).
Step 2, with `--reencrypt`, gives each conversation a fresh data key and re-seals its messages
and edit history in batches. Every ciphertext names its own key, so reads work throughout, and
each row is updated only if its key is still the old one (an edit meanwhile wins).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from core.services import Services
from domain import jobs
from domain.keys import create_data_key, rewrap_batch, stale_key_count
from domain.messages import edit_aad, message_aad
from domain.search import index as search_index
from models import Conversation, Job, Message, MessageEdit

logger = logging.getLogger(__name__)

TASK = "tasks.rotation.rotate_keys"


def rotation_size(svc: Services, session: Session, job: Job) -> int:
    """Data keys still under an older master key, plus sealed messages when re-encrypting."""
    total = stale_key_count(svc, session)
    if job.params.get("reencrypt"):
        sealed = select(func.count()).select_from(Message).where(Message.text_ct.is_not(None))
        total += session.scalar(sealed) or 0
    return total


def rotate(svc: Services, job: Job, progress: jobs.Progress) -> Mapping[str, Any]:
    """Re-wrap every data key under the newest master key, then re-encrypt if asked."""
    batch = svc.settings.rotation_batch
    done = 0
    while True:
        with svc.Session.begin() as s:
            n = rewrap_batch(svc, s, batch)
        done += n
        progress(done)
        if n < batch:
            break
    if job.params.get("reencrypt"):
        with svc.ReadSession() as s:
            conv_ids = list(s.scalars(select(Conversation.id).order_by(Conversation.id)))
        for cid in conv_ids:
            done = reencrypt_conversation(svc, cid, done, progress)
    logger.info("key rotation %s finished: %d item(s)", job.id, done)
    return {}


ROTATION = jobs.JobKind("key_rotation", TASK, rotation_size, rotate)


def start_rotation(svc: Services, *, reencrypt: bool, actor: str) -> str:
    """Queue a rotation (the CLI); returns the job's id."""
    with svc.Session.begin() as s:
        return jobs.start(s, ROTATION, {"reencrypt": reencrypt}, actor).id


def reencrypt_conversation(svc: Services, cid: str, done: int, progress: jobs.Progress) -> int:
    """Give `cid` a fresh data key and re-seal its text under it; returns `done` advanced by
    the messages re-sealed."""
    batch = svc.settings.rotation_batch
    with svc.Session.begin() as s:
        conv = s.get(Conversation, cid)
        if conv is None:
            return done
        new_key = create_data_key(svc, s, cid)
        conv.data_key_id = new_key  # new text uses the new key from now on
    while True:
        with svc.Session.begin() as s:
            rows = s.execute(
                select(Message.id, Message.key_id, Message.text_ct, Message.seq)
                .where(
                    Message.conversation_id == cid,
                    Message.key_id.is_not(None),
                    Message.key_id != new_key,
                )
                .limit(batch)
            ).all()
            resealed_texts: list[tuple[int, str, str]] = []
            for mid, old_key, blob, seq in rows:
                assert old_key is not None and blob is not None  # filtered by the query
                text = svc.keyring.open_text(old_key, blob, message_aad(mid))
                resealed = s.execute(
                    update(Message)
                    .where(Message.id == mid, Message.key_id == old_key)
                    .values(
                        key_id=new_key,
                        text_ct=svc.keyring.seal_text(new_key, text, message_aad(mid)),
                    )
                )
                if resealed.rowcount:  # type: ignore[attr-defined]
                    resealed_texts.append((seq, new_key, text))
            # Their search tokens follow their key, one rewrite per batch (docs/search.md).
            search_index.write(svc, s, cid, entries=resealed_texts)
        done += len(rows)
        progress(done)
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
