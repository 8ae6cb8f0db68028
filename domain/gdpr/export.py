"""GDPR export: everything Parley holds about a user, as a zip of JSON Lines files and the
user's attachment files.

Built as a job with progress (a user's history can be large), reading in batches. The zip is
produced as a stream (zipstream.py) and sealed on its way to storage (core/filecrypt.py chunks)
under a data key of its own, so no plaintext touches disk; stored_exports.py serves it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core.crypto import MissingKeyError
from core.ids import iso, utcnow
from core.services import Services
from domain import jobs
from domain.errors import NotFound
from domain.gdpr import export_lines as lines
from domain.gdpr.stored_exports import EXPORT, export_context, export_object, storage
from domain.gdpr.zipstream import zip_stream
from domain.keys import create_data_key
from domain.messages import edit_aad, message_aad
from models import (
    Attachment,
    Conversation,
    DataKey,
    Job,
    Message,
    MessageEdit,
    Notification,
    Participant,
    PushPreference,
    PushSubscription,
    Reaction,
    Report,
    User,
)

logger = logging.getLogger(__name__)

EXPORT_TASK = "tasks.retention.export_user"


def known_user(session: Session, user_id: str) -> User:
    user = session.get(User, user_id)
    if user is None:
        raise NotFound(f"user {user_id} is not known to Parley")
    return user


def export_size(session: Session, user_id: str) -> int:
    """How many items an export of `user_id` writes (the job's `total`)."""
    counts = [
        select(func.count()).select_from(Message).where(Message.sender_id == user_id),
        select(func.count()).select_from(Participant).where(Participant.user_id == user_id),
        select(func.count()).select_from(Reaction).where(Reaction.user_id == user_id),
        select(func.count()).select_from(Report).where(Report.reporter_id == user_id),
        select(func.count()).select_from(Notification).where(Notification.user_id == user_id),
        select(func.count()).select_from(Attachment).where(Attachment.uploader_id == user_id),
    ]
    return sum(int(session.scalar(q) or 0) for q in counts)


class _Export:
    """Produces the entries of one user's export, reading in batches and counting progress."""

    def __init__(self, svc: Services, user_id: str, progress: jobs.Progress) -> None:
        self.svc = svc
        self.user_id = user_id
        self.progress = progress
        self.done = 0
        self.batch = svc.settings.retention_batch

    def _advance(self, n: int) -> None:
        self.done += n
        self.progress(self.done)

    def _open(self, key_id: str | None, blob: bytes | None, aad: str) -> str | None:
        if key_id is None or blob is None:
            return None
        try:
            return self.svc.keyring.open_text(key_id, blob, aad)
        except MissingKeyError:  # the conversation was deleted meanwhile
            return None

    def entries(self) -> Iterator[tuple[str, Iterable[bytes]]]:
        now = utcnow()
        with self.svc.ReadSession() as s:
            profile = lines.profile(
                known_user(s, self.user_id), s.get(PushPreference, self.user_id)
            )
        readme = lines.README.format(user_id=self.user_id, exported_at=iso(now))
        yield "README.txt", [readme.encode()]
        yield "profile.json", [profile]
        yield "conversations.jsonl", self._conversations()
        yield "messages.jsonl", self._messages()
        yield "reactions.jsonl", self._simple(Reaction, Reaction.user_id, lines.reaction)
        yield "reports.jsonl", self._simple(Report, Report.reporter_id, lines.report)
        yield (
            "notifications.jsonl",
            self._simple(Notification, Notification.user_id, lines.notification),
        )
        yield (
            "push_subscriptions.jsonl",
            self._simple(PushSubscription, PushSubscription.user_id, lines.subscription),
        )
        yield from self._attachments()

    def _conversations(self) -> Iterator[bytes]:
        last = ""
        while True:
            with self.svc.ReadSession() as s:
                rows = s.execute(
                    select(Participant, Conversation)
                    .join(Conversation, Conversation.id == Participant.conversation_id)
                    .where(Participant.user_id == self.user_id, Participant.conversation_id > last)
                    .order_by(Participant.conversation_id)
                    .limit(self.batch)
                ).all()
                ids = [c.id for _, c in rows]
                members: dict[str, list[str]] = {}
                for cid, uid in s.execute(
                    select(Participant.conversation_id, Participant.user_id).where(
                        Participant.conversation_id.in_(ids), Participant.left_at.is_(None)
                    )
                ):
                    members.setdefault(cid, []).append(uid)
            for part, conv in rows:
                yield lines.conversation(part, conv, members.get(conv.id, []))
            self._advance(len(rows))
            if len(rows) < self.batch:
                return
            last = rows[-1][0].conversation_id

    def _messages(self) -> Iterator[bytes]:
        last = ""
        while True:
            with self.svc.ReadSession() as s:
                msgs = list(
                    s.scalars(
                        select(Message)
                        .where(Message.sender_id == self.user_id, Message.id > last)
                        .order_by(Message.id)
                        .limit(self.batch)
                    )
                )
                ids = [m.id for m in msgs]
                edits: dict[str, list[MessageEdit]] = {}
                for e in s.scalars(
                    select(MessageEdit)
                    .where(MessageEdit.message_id.in_(ids))
                    .order_by(MessageEdit.id)
                ):
                    edits.setdefault(e.message_id, []).append(e)
                files: dict[str, list[str]] = {}
                for aid, mid in s.execute(
                    select(Attachment.id, Attachment.message_id).where(
                        Attachment.message_id.in_(ids)
                    )
                ):
                    files.setdefault(mid or "", []).append(aid)
            for m in msgs:
                yield lines.message(
                    m,
                    self._open(m.key_id, m.text_ct, message_aad(m.id)),
                    [
                        (e.replaced_at, self._open(e.key_id, e.text_ct, edit_aad(m.id)))
                        for e in edits.get(m.id, [])
                    ],
                    files.get(m.id, []),
                )
            self._advance(len(msgs))
            if len(msgs) < self.batch:
                return
            last = msgs[-1].id

    def _simple(
        self, model: Any, owner: Any, shape: Callable[[Any], dict[str, Any]]
    ) -> Iterator[bytes]:
        """Rows of `model` whose `owner` column is the user, in primary-key order."""
        pk = model.__mapper__.primary_key
        offset = 0
        while True:
            with self.svc.ReadSession() as s:
                rows = list(
                    s.scalars(
                        select(model)
                        .where(owner == self.user_id)
                        .order_by(*pk)
                        .offset(offset)
                        .limit(self.batch)
                    )
                )
            for row in rows:
                yield lines.json_line(shape(row))
            self._advance(len(rows))
            offset += len(rows)
            if len(rows) < self.batch:
                return

    def _attachments(self) -> Iterator[tuple[str, Iterable[bytes]]]:
        from domain import attachments as files

        with self.svc.ReadSession() as s:
            atts = list(
                s.scalars(
                    select(Attachment)
                    .where(Attachment.uploader_id == self.user_id)
                    .order_by(Attachment.id)
                )
            )
        index: list[bytes] = []
        bodies: list[tuple[str, Attachment]] = []
        for att in atts:
            try:
                name = files.filename(self.svc, att)
            except MissingKeyError:
                name = None
            path = f"attachments/{att.id}-{name}" if name and att.state == "ready" else None
            index.append(lines.attachment(att, name, path))
            if path is not None:
                bodies.append((path, att))
        yield "attachments.jsonl", index
        for path, att in bodies:
            yield path, self._file(att)

    def _file(self, att: Attachment) -> Iterator[bytes]:
        from domain import attachments as files

        try:
            sealed = files.open_variant(self.svc, att, files.ORIGINAL)
        except (MissingKeyError, LookupError):
            logger.warning("export: attachment file gone", extra={"attachment_id": att.id})
        else:
            yield from sealed.iter_range()
        self._advance(1)


def build_export(svc: Services, job: Job, progress: jobs.Progress) -> Mapping[str, Any]:
    """Write the sealed zip of the job's user's data; returns what the job records as its result.

    The zip is sealed under a data key of its own (a `data_keys` row with no conversation):
    deleting that row shreds the export. A re-run reuses the key and overwrites the object."""
    from core.filecrypt import seal_stream

    job_id, user_id = job.id, job.params["user_id"]
    with svc.Session.begin() as s:
        row = s.get(Job, job_id)
        assert row is not None
        key_id = row.result.get("key_id")
        if key_id is None or s.get(DataKey, key_id) is None:
            key_id = create_data_key(svc, s, None)
            row.result = {"key_id": key_id}
    dek = svc.keyring.data_key(key_id)
    plain = 0

    def counted(chunks: Iterator[bytes]) -> Iterator[bytes]:
        nonlocal plain
        for chunk in chunks:
            plain += len(chunk)
            yield chunk

    zipped = counted(zip_stream(_Export(svc, user_id, progress).entries()))
    stored = storage(svc).put(
        export_object(job_id), seal_stream(dek, export_context(job_id), zipped)
    )
    expires = utcnow() + timedelta(seconds=svc.settings.export_keep_s)
    logger.info("export written", extra={"job_id": job_id, "bytes": stored})
    return {
        "key_id": key_id,
        "size": plain,
        "stored_bytes": stored,
        "expires_at": iso(expires),
    }


def user_items(svc: Services, session: Session, job: Job) -> int:
    """The size of an export or erasure job: the items held about its user."""
    return export_size(session, job.params["user_id"])


EXPORT_JOB = jobs.JobKind(EXPORT, EXPORT_TASK, user_items, build_export)
