"""GDPR erasure of a user (the policy is in docs/retention.md).

The user's messages stay as text-less tombstones under a pseudonym (others' seq history stays
whole; the purge deletes the rows after the grace period); their edit history, reactions,
reports, notifications, push targets, uploads and exports are deleted; their memberships move
to the pseudonym and end; every label naming them (audit log, pins, jobs) names the pseudonym
instead; the user row goes. Every step is idempotent, so a re-run after a crash finishes it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from redis.exceptions import RedisError
from sqlalchemy import String, cast, delete, func, select, update
from sqlalchemy.orm import Session

from core.events import PRESENCE_PREFIX, stream_key
from core.ids import utcnow
from core.services import Services
from domain import events, jobs
from domain.gdpr.export import user_items
from domain.gdpr.stored_exports import EXPORT, drop_export
from domain.retention.deleting import delete_attachment_files, rowcount
from domain.retention.shredding import forget_keys
from domain.search import index as search_index
from models import (
    Attachment,
    AuditEntry,
    Conversation,
    DataKey,
    Job,
    Message,
    MessageEdit,
    Notification,
    Outbox,
    Participant,
    PushDelivery,
    PushPreference,
    PushSubscription,
    Reaction,
    Report,
    User,
)

logger = logging.getLogger(__name__)

ERASE_TASK = "tasks.retention.erase_user"
ERASE = "gdpr_erase"  # the jobs.kind of erasures


def _relabel(value: Any, old: str, new: str) -> Any:
    """`value` with every string naming `old` (as an id or a `user:` label) naming `new`."""
    if isinstance(value, str):
        return {old: new, f"user:{old}": f"user:{new}"}.get(value, value)
    if isinstance(value, list):
        return [_relabel(v, old, new) for v in value]
    if isinstance(value, dict):
        return {k: _relabel(v, old, new) for k, v in value.items()}
    return value


class _Erasure:
    """One erasure run: each step in short transactions of its own, counting what it changed."""

    def __init__(self, svc: Services, job: Job, progress: jobs.Progress) -> None:
        self.svc = svc
        self.uid: str = job.params["user_id"]
        self.pseudo: str = job.params["pseudonym"]
        self.job_id = job.id
        self.progress = progress
        self.batch = svc.settings.retention_batch
        self.done = 0
        self.counts: dict[str, int] = {}
        self.touched: set[str] = set()  # conversations whose history changed

    def _count(self, what: str, n: int) -> None:
        self.counts[what] = self.counts.get(what, 0) + n
        self.done += n
        self.progress(self.done)

    def run(self) -> dict[str, int]:
        self.uploads()
        self.messages()
        self.ownedrowcount()
        self.exports()
        self.memberships()
        self.labels()
        self.messages()  # anything posted while the job ran
        self.ownedrowcount()
        self.finish()
        return self.counts

    def uploads(self) -> None:
        while True:
            with self.svc.ReadSession() as s:
                atts = list(
                    s.scalars(
                        select(Attachment)
                        .where(Attachment.uploader_id == self.uid)
                        .limit(self.batch)
                    )
                )
            if not atts:
                return
            delete_attachment_files(self.svc, atts)
            with self.svc.Session.begin() as s:
                gone = s.execute(delete(Attachment).where(Attachment.id.in_([a.id for a in atts])))
            self._count("attachments", rowcount(gone))

    def messages(self) -> None:
        """Their messages become tombstones under the pseudonym: no text, no history."""
        now = utcnow()
        while True:
            with self.svc.Session.begin() as s:
                rows = s.execute(
                    select(Message.id, Message.conversation_id, Message.seq)
                    .where(Message.sender_id == self.uid)
                    .limit(self.batch)
                ).all()
                ids = [r.id for r in rows]
                if ids:
                    s.execute(delete(MessageEdit).where(MessageEdit.message_id.in_(ids)))
                    s.execute(
                        update(Message)
                        .where(Message.id.in_(ids))
                        .values(
                            sender_id=self.pseudo,
                            text_ct=None,
                            key_id=None,
                            client_msg_id=None,
                            meta={},
                            moderation_spans=[],
                            moderation_reason=None,
                            deleted_at=func.coalesce(Message.deleted_at, now),
                        )
                    )
                    # The tombstones keep their rows, not their search tokens.
                    search_index.forget_messages(s, ids)
            self.touched.update(r.conversation_id for r in rows)
            self._count("messages", len(ids))
            if len(ids) < self.batch:
                return

    def ownedrowcount(self) -> None:
        """Rows that are theirs alone: reactions, reports, notifications, push targets."""
        owned = (
            ("reactions", Reaction, Reaction.user_id),
            ("reports", Report, Report.reporter_id),
            ("notifications", Notification, Notification.user_id),
            ("push_deliveries", PushDelivery, PushDelivery.user_id),
            ("push_preferences", PushPreference, PushPreference.user_id),
        )
        for what, model, column in owned:
            with self.svc.Session.begin() as s:
                gone = rowcount(s.execute(delete(model).where(column == self.uid)))
            self._count(what, gone)  # progress is a transaction of its own: after the commit
        with self.svc.Session.begin() as s:
            subs = list(
                s.scalars(select(PushSubscription).where(PushSubscription.user_id == self.uid))
            )
            keys = [p.key_id for p in subs if p.key_id]
            s.execute(delete(PushSubscription).where(PushSubscription.user_id == self.uid))
            if keys:
                s.execute(delete(DataKey).where(DataKey.id.in_(keys)))  # shreds their secrets
        forget_keys(self.svc, keys)
        self._count("push_subscriptions", len(subs))

    def exports(self) -> None:
        """Their exports hold their data: delete the zips, shred the keys."""
        with self.svc.Session.begin() as s:
            jobs = [
                j
                for j in s.scalars(select(Job).where(Job.kind == EXPORT))
                if j.params.get("user_id") == self.uid
            ]
            keys = [
                k for k in (drop_export(self.svc, s, j) for j in jobs if j.state == "done") if k
            ]
            for j in jobs:
                j.params = {"user_id": self.pseudo}
        forget_keys(self.svc, keys)
        self._count("exports", len(jobs))

    def memberships(self) -> None:
        """Memberships move to the pseudonym and end (cursors stay, so seq history is whole);
        a conversation left without an owner gets its longest-standing member as owner."""
        now = utcnow()
        with self.svc.Session.begin() as s:
            if s.get(User, self.pseudo) is None:
                s.add(User(id=self.pseudo, roles=[]))
                s.flush()
            parts = list(s.scalars(select(Participant).where(Participant.user_id == self.uid)))
            cids = [p.conversation_id for p in parts]
            owned = [p.conversation_id for p in parts if p.left_at is None and p.role == "owner"]
            s.execute(
                update(Participant)
                .where(Participant.user_id == self.uid)
                .values(user_id=self.pseudo, left_at=func.coalesce(Participant.left_at, now))
            )
            for cid in owned:
                self._hand_over(s, cid)
            if cids:
                s.execute(
                    update(Conversation).where(Conversation.id.in_(cids)).values(dedupe_key=None)
                )
            for cid in cids:
                events.emit(
                    s,
                    "conversation.updated",
                    {"conversation_id": cid, "change": "members"},
                    _members(s, cid),
                )
        self._count("memberships", len(parts))

    @staticmethod
    def _hand_over(session: Session, cid: str) -> None:
        others = list(
            session.scalars(
                select(Participant)
                .where(Participant.conversation_id == cid, Participant.left_at.is_(None))
                .order_by(Participant.joined_at)
            )
        )
        if others and not any(o.role == "owner" for o in others):
            others[0].role = "owner"

    def labels(self) -> None:
        """Every place that names them by id or label names the pseudonym instead."""
        old, new = f"user:{self.uid}", f"user:{self.pseudo}"
        with self.svc.Session.begin() as s:
            s.execute(update(Message).where(Message.pinned_by == old).values(pinned_by=new))
            s.execute(
                update(Conversation).where(Conversation.created_by == old).values(created_by=new)
            )
            s.execute(update(Job).where(Job.created_by == old).values(created_by=new))
            s.execute(update(AuditEntry).where(AuditEntry.actor == old).values(actor=new))
            s.execute(
                update(AuditEntry)
                .where(AuditEntry.target_type == "user", AuditEntry.target_id == self.uid)
                .values(target_id=self.pseudo)
            )
            needle = f'%"{self.uid}"%'
            for entry in s.scalars(
                select(AuditEntry).where(cast(AuditEntry.detail, String).like(needle))
            ):
                entry.detail = _relabel(entry.detail, self.uid, self.pseudo)
            # Finished outbox rows are kept a day for ops; those naming them can go now.
            s.execute(
                delete(Outbox).where(
                    Outbox.done_at.is_not(None), cast(Outbox.args, String).like(needle)
                )
            )

    def finish(self) -> None:
        with self.svc.Session.begin() as s:
            for cid in sorted(self.touched):
                events.emit(
                    s,
                    "conversation.updated",
                    {"conversation_id": cid, "change": "history"},
                    _members(s, cid),
                )
            s.execute(delete(User).where(User.id == self.uid))
        try:
            self.svc.redis.delete(stream_key(self.uid), PRESENCE_PREFIX + self.uid)
        except RedisError:
            logger.warning("erasure: the user's stream could not be deleted now; it is capped")


def erase_user(svc: Services, job: Job, progress: jobs.Progress) -> dict[str, int]:
    """Erase `job.params.user_id` (see the module docstring). Returns counts of what changed."""
    counts = _Erasure(svc, job, progress).run()
    logger.info("user erased", extra={"job_id": job.id, **counts})
    return counts


def finish_erase(session: Session, job: Job, counts: Mapping[str, Any]) -> None:
    """Record the erasure: the job and the audit entry name only the pseudonym from now on."""
    pseudo = job.params["pseudonym"]
    job.params = {"pseudonym": pseudo}
    job.result = dict(counts)
    session.add(
        AuditEntry(
            actor=job.created_by or "system",
            action="user.erase",
            target_type="user",
            target_id=pseudo,
            detail={"job_id": job.id, **counts},
        )
    )


def _members(session: Session, cid: str) -> list[str]:
    return list(
        session.scalars(
            select(Participant.user_id).where(
                Participant.conversation_id == cid, Participant.left_at.is_(None)
            )
        )
    )


ERASE_JOB = jobs.JobKind(ERASE, ERASE_TASK, user_items, erase_user, finish_erase)
