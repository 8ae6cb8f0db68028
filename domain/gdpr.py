"""GDPR: export everything Parley holds about a user, and erase a user.

Both run as jobs with progress (tasks/retention.py) because a user's history can be large.

Export: a zip of JSON Lines files and the user's attachment files, built as a stream and sealed
on its way to storage (core/filecrypt.py chunks, under a data key of its own), so no plaintext
touches disk. It is served decrypted through a signed URL that expires after
`PARLEY_DOWNLOAD_TTL_S`; the zip itself is deleted, and its key shredded, after
`PARLEY_EXPORT_KEEP_S`.

Erasure (policy in docs/retention.md): the user's messages stay as text-less tombstones under a
pseudonym (others' seq history stays whole; the purge deletes the rows after the grace period);
their edit history, reactions, reports, notifications, push targets, uploads and exports are
deleted; their memberships move to the pseudonym and end; every label naming them (audit log,
pins, jobs) names the pseudonym instead; the user row goes.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import secrets
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from redis.exceptions import RedisError
from sqlalchemy import String, cast, delete, func, select, update
from sqlalchemy.orm import Session

from core.crypto import MissingKeyError
from core.events import PRESENCE_PREFIX, stream_key
from core.ids import new_id, utcnow
from core.services import Services
from domain import audit, events, outbox
from domain.errors import Forbidden, NotFound
from domain.keys import create_data_key
from domain.messages import edit_aad, message_aad
from domain.principals import Principal
from domain.retention import delete_attachment_files, forget_keys
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

if TYPE_CHECKING:
    from core.filecrypt import SealedFile

logger = logging.getLogger(__name__)

EXPORT_TASK = "tasks.retention.export_user"
ERASE_TASK = "tasks.retention.erase_user"
EXPORT = "gdpr_export"
ERASE = "gdpr_erase"
PRIVACY_ROLE = "admin"
_URL_KEY_INFO = b"parley:export-url:v1"
FLUSH_BYTES = 64 * 1024

Progress = Callable[[int], None]


def _iso(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value is not None else None


def _rows(result: Any) -> int:
    return int(getattr(result, "rowcount", 0) or 0)


# --- who may ----------------------------------------------------------------------------------


def is_privacy_admin(who: Principal) -> bool:
    """Exports of anyone and erasure: the host platform's API key or the `admin` role."""
    return who.is_service or PRIVACY_ROLE in who.roles


def _known_user(session: Session, user_id: str) -> User:
    user = session.get(User, user_id)
    if user is None:
        raise NotFound(f"user {user_id} is not known to Parley")
    return user


def start_export(session: Session, who: Principal, user_id: str) -> Job:
    """Queue an export of `user_id`'s data: the user themselves, an admin or an API key.

    While one is queued or running, asking again returns it (an export is not cheap)."""
    if not is_privacy_admin(who) and who.user_id != user_id:
        raise Forbidden("you may export your own data; others' needs an API key or admin role")
    pending = _pending(session, EXPORT, user_id)
    if pending is not None:
        return pending
    _known_user(session, user_id)
    job = Job(id=new_id(), kind=EXPORT, params={"user_id": user_id}, created_by=who.label)
    session.add(job)
    session.flush()  # state, timestamps: the 202 shows them
    outbox.add(session, EXPORT_TASK, [job.id], ref_id=job.id)
    audit.record(session, who, "user.export", "user", user_id, detail={"job_id": job.id})
    return job


def start_erase(session: Session, who: Principal, user_id: str, reason: str | None) -> Job:
    """Queue the erasure of `user_id` (API key or admin); asking twice returns the same job."""
    if not is_privacy_admin(who):
        raise Forbidden("erasing a user needs an API key or the admin role")
    pending = _pending(session, ERASE, user_id)
    if pending is not None:
        return pending
    _known_user(session, user_id)
    pseudonym = "erased-" + secrets.token_hex(8)
    job = Job(
        id=new_id(),
        kind=ERASE,
        params={"user_id": user_id, "pseudonym": pseudonym},
        created_by=who.label,
    )
    session.add(job)
    session.flush()  # state, timestamps: the 202 shows them
    outbox.add(session, ERASE_TASK, [job.id], ref_id=job.id)
    audit.record(
        session,
        who,
        "user.erase_requested",
        "user",
        user_id,
        reason=reason,
        detail={"job_id": job.id},
    )
    return job


def _pending(session: Session, kind: str, user_id: str) -> Job | None:
    """A queued or running job of `kind` for `user_id` (such jobs are few at any time)."""
    for job in session.scalars(
        select(Job).where(Job.kind == kind, Job.state.in_(("queued", "running")))
    ):
        if job.params.get("user_id") == user_id:
            return job
    return None


def visible_job(session: Session, who: Principal, job_id: str) -> Job:
    """A job the caller may follow: admins and API keys see all; a user sees the jobs they
    started and exports of their own data."""
    job = session.get(Job, job_id)
    if job is not None and (
        is_privacy_admin(who)
        or job.created_by == who.label
        or (job.kind == EXPORT and job.params.get("user_id") == who.user_id)
    ):
        return job
    raise NotFound(f"job {job_id} does not exist")


def job_view(svc: Services, job: Job, now: datetime | None = None) -> dict[str, Any]:
    now = now or utcnow()
    out: dict[str, Any] = {
        "id": job.id,
        "kind": job.kind,
        "state": job.state,
        "done": job.done,
        "total": job.total,
        "error": job.error,
        "created_at": _iso(job.created_at),
        "updated_at": _iso(job.updated_at),
    }
    subject = job.params.get("user_id") or job.params.get("pseudonym")
    if subject is not None:
        out["user_id"] = subject
    if job.params.get("conversation_id"):
        out["conversation_id"] = job.params["conversation_id"]
    if job.kind == EXPORT and job.state == "done":
        out["expires_at"] = job.result.get("expires_at")
        out["size"] = job.result.get("size")
        expires = int(now.timestamp()) + svc.settings.download_ttl_s
        out["download_url"] = download_url(svc, job.id, expires)
        out["download_expires_at"] = _iso(datetime.fromtimestamp(expires, now.tzinfo))
    if job.kind == ERASE and job.state == "done":
        out["result"] = dict(job.result)
    return out


# --- signed download URLs ---------------------------------------------------------------------


def _url_keys(svc: Services) -> list[bytes]:
    """HMAC keys derived from each master key: the newest signs, all verify."""
    return [
        HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_URL_KEY_INFO).derive(key)
        for _, key in svc.keyring.master.keys
    ]


def _mac(key: bytes, job_id: str, expires: int) -> str:
    digest = hmac.new(key, f"{job_id}:{expires}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def download_url(svc: Services, job_id: str, expires: int) -> str:
    sig = _mac(_url_keys(svc)[0], job_id, expires)
    return f"/v1/privacy/jobs/{job_id}/download?exp={expires}&sig={sig}"


def check_signature(svc: Services, job_id: str, expires: int, sig: str) -> None:
    # bytes: compare_digest refuses non-ASCII str, and `sig` is whatever the client sent
    if not any(
        hmac.compare_digest(_mac(k, job_id, expires).encode(), sig.encode()) for k in _url_keys(svc)
    ):
        raise Forbidden("the download link is not valid; ask the job status for a new one")
    if expires < utcnow().timestamp():
        raise Forbidden("the download link has expired; ask the job status for a new one")


def _storage(svc: Services) -> Any:
    from domain.attachments import storage_for

    return storage_for(svc)


def export_object(job_id: str) -> str:
    return f"exports/{job_id}"


def export_context(job_id: str) -> str:
    return f"export:{job_id}"


def open_export(svc: Services, session: Session, job_id: str) -> tuple[SealedFile, Job]:
    """The finished export's zip, decrypted as it is read."""
    from core.filecrypt import SealedFile

    job = session.get(Job, job_id)
    if job is None or job.kind != EXPORT or job.state != "done":
        raise NotFound(f"export {job_id} does not exist, is not ready or has expired")
    store = _storage(svc)
    key = export_object(job_id)
    try:
        dek = svc.keyring.data_key(job.result["key_id"])
        size = store.size(key)
    except (MissingKeyError, LookupError) as exc:
        raise NotFound(f"export {job_id} has expired") from exc
    return SealedFile(dek, export_context(job_id), size, lambda a, b: store.open(key, a, b)), job


# --- export -----------------------------------------------------------------------------------


class _Pipe:
    """A write-only file for zipfile that hands back what was written, so the zip is produced
    piece by piece in memory (zipfile writes data descriptors to an unseekable file)."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def write(self, data: bytes) -> int:
        self._buf += data
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass

    def __len__(self) -> int:
        return len(self._buf)

    def take(self) -> bytes:
        out = bytes(self._buf)
        self._buf.clear()
        return out


def zip_stream(entries: Iterable[tuple[str, Iterable[bytes]]]) -> Iterator[bytes]:
    """Zip (name, content pieces) entries lazily: memory stays at about one piece."""
    pipe = _Pipe()
    with zipfile.ZipFile(pipe, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, pieces in entries:
            with zf.open(name, "w") as fh:
                for piece in pieces:
                    fh.write(piece)
                    if len(pipe) >= FLUSH_BYTES:
                        yield pipe.take()
            yield pipe.take()
    yield pipe.take()


def _line(obj: Mapping[str, Any]) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


README = """Parley data export
==================

user_id: {user_id}
exported_at: {exported_at}

profile.json            the user record
conversations.jsonl     conversations the user is or was in, with their membership, read and
                        delivered cursors (read receipts) and settings
messages.jsonl          messages the user sent, with their text decrypted and their edit history
reactions.jsonl         reactions the user added
reports.jsonl           reports the user filed
notifications.jsonl     the user's in-app notifications
push_subscriptions.jsonl  where the user asked to be reached
attachments.jsonl       files the user uploaded; the files are under attachments/
"""


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

    def __init__(self, svc: Services, user_id: str, progress: Progress) -> None:
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
            user = _known_user(s, self.user_id)
            profile = {
                "user_id": user.id,
                "name": user.name,
                "avatar_url": user.avatar_url,
                "roles": list(user.roles or []),
                "created_at": _iso(user.created_at),
                "muted_until": _iso(user.muted_until),
                "banned_at": _iso(user.banned_at),
            }
            prefs = s.get(PushPreference, self.user_id)
            if prefs is not None:
                profile["push_preview"] = prefs.preview
        yield "README.txt", [README.format(user_id=self.user_id, exported_at=_iso(now)).encode()]
        yield "profile.json", [json.dumps(profile, ensure_ascii=False, indent=2).encode()]
        yield "conversations.jsonl", self._conversations()
        yield "messages.jsonl", self._messages()
        yield "reactions.jsonl", self._simple(Reaction, Reaction.user_id, _reaction)
        yield "reports.jsonl", self._simple(Report, Report.reporter_id, _report)
        yield "notifications.jsonl", self._simple(Notification, Notification.user_id, _note)
        yield (
            "push_subscriptions.jsonl",
            self._simple(PushSubscription, PushSubscription.user_id, _subscription),
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
                yield _line(
                    {
                        "conversation_id": conv.id,
                        "type": conv.type,
                        "subject": conv.subject,
                        "context": (
                            {"type": conv.context_type, "id": conv.context_id}
                            if conv.context_type
                            else None
                        ),
                        "status": conv.status,
                        "created_at": _iso(conv.created_at),
                        "members": sorted(members.get(conv.id, [])),
                        "role": part.role,
                        "joined_at": _iso(part.joined_at),
                        "left_at": _iso(part.left_at),
                        "read_seq": part.read_seq,
                        "delivered_seq": part.delivered_seq,
                        "muted_until": _iso(part.muted_until),
                        "notification_level": part.notification_level,
                        "archived": part.archived,
                    }
                )
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
                yield _line(
                    {
                        "id": m.id,
                        "conversation_id": m.conversation_id,
                        "seq": m.seq,
                        "type": m.type,
                        "text": self._open(m.key_id, m.text_ct, message_aad(m.id)),
                        "state": m.state,
                        "created_at": _iso(m.created_at),
                        "edited_at": _iso(m.edited_at),
                        "deleted_at": _iso(m.deleted_at),
                        "expired_at": _iso(m.expired_at),
                        "reply_to": m.reply_to_id,
                        "metadata": m.meta or {},
                        "moderation": {
                            "action": m.moderation_action,
                            "labels": list(m.moderation_labels or []),
                        },
                        "edits": [
                            {
                                "replaced_at": _iso(e.replaced_at),
                                "text": self._open(e.key_id, e.text_ct, edit_aad(m.id)),
                            }
                            for e in edits.get(m.id, [])
                        ],
                        "attachments": files.get(m.id, []),
                    }
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
                yield _line(shape(row))
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
            index.append(
                _line(
                    {
                        "id": att.id,
                        "conversation_id": att.conversation_id,
                        "message_id": att.message_id,
                        "state": att.state,
                        "kind": att.kind,
                        "content_type": att.content_type,
                        "filename": name,
                        "size": att.size,
                        "created_at": _iso(att.created_at),
                        "file": path,
                    }
                )
            )
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


def _reaction(r: Reaction) -> dict[str, Any]:
    return {"message_id": r.message_id, "emoji": r.emoji, "created_at": _iso(r.created_at)}


def _report(r: Report) -> dict[str, Any]:
    return {
        "id": r.id,
        "message_id": r.message_id,
        "reason": r.reason,
        "note": r.note,
        "created_at": _iso(r.created_at),
        "resolved_at": _iso(r.resolved_at),
    }


def _note(n: Notification) -> dict[str, Any]:
    return {
        "id": n.id,
        "kind": n.kind,
        "conversation_id": n.conversation_id,
        "message_id": n.message_id,
        "count": n.count,
        "created_at": _iso(n.created_at),
        "read_at": _iso(n.read_at),
    }


def _subscription(p: PushSubscription) -> dict[str, Any]:
    return {"id": p.id, "kind": p.kind, "target": p.target, "created_at": _iso(p.created_at)}


def build_export(svc: Services, job_id: str, user_id: str, progress: Progress) -> dict[str, Any]:
    """Write the sealed zip of `user_id`'s data; returns what the job records as its result.

    The zip is sealed under a data key of its own (a `data_keys` row with no conversation):
    deleting that row shreds the export. A re-run reuses the key and overwrites the object."""
    from core.filecrypt import seal_stream

    with svc.Session.begin() as s:
        job = s.get(Job, job_id)
        assert job is not None
        key_id = job.result.get("key_id")
        if key_id is None or s.get(DataKey, key_id) is None:
            key_id = create_data_key(svc, s, None)
            job.result = {"key_id": key_id}
    dek = svc.keyring.data_key(key_id)
    plain = 0

    def counted(chunks: Iterator[bytes]) -> Iterator[bytes]:
        nonlocal plain
        for chunk in chunks:
            plain += len(chunk)
            yield chunk

    zipped = counted(zip_stream(_Export(svc, user_id, progress).entries()))
    stored = _storage(svc).put(
        export_object(job_id), seal_stream(dek, export_context(job_id), zipped)
    )
    expires = utcnow() + timedelta(seconds=svc.settings.export_keep_s)
    logger.info("export written", extra={"job_id": job_id, "bytes": stored})
    return {"key_id": key_id, "size": plain, "stored_bytes": stored, "expires_at": _iso(expires)}


def _drop_export(svc: Services, session: Session, job: Job) -> str | None:
    """Delete an export's zip and shred its key; the job stays, marked expired."""
    _storage(svc).delete(export_object(job.id))
    key_id = job.result.get("key_id")
    if key_id:
        session.execute(delete(DataKey).where(DataKey.id == key_id))
    job.state = "expired"
    job.result = {k: v for k, v in job.result.items() if k not in ("key_id",)}
    return key_id


def expire_exports(svc: Services, now: datetime) -> int:
    """Delete exports past `PARLEY_EXPORT_KEEP_S` (run by the purge). Returns how many."""
    with svc.Session.begin() as s:
        jobs = [
            j
            for j in s.scalars(select(Job).where(Job.kind == EXPORT, Job.state == "done"))
            if j.result.get("expires_at")
            and datetime.fromisoformat(j.result["expires_at"].replace("Z", "+00:00")) <= now
        ]
        keys = [k for k in (_drop_export(svc, s, j) for j in jobs) if k]
    forget_keys(svc, keys)
    return len(jobs)


# --- erasure ----------------------------------------------------------------------------------


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
    def __init__(self, svc: Services, job: Job, progress: Progress) -> None:
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
        self.owned_rows()
        self.exports()
        self.memberships()
        self.labels()
        self.messages()  # anything posted while the job ran
        self.owned_rows()
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
            self._count("attachments", _rows(gone))

    def messages(self) -> None:
        """Their messages become tombstones under the pseudonym: no text, no history."""
        now = utcnow()
        while True:
            with self.svc.Session.begin() as s:
                rows = s.execute(
                    select(Message.id, Message.conversation_id)
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
            self.touched.update(r.conversation_id for r in rows)
            self._count("messages", len(ids))
            if len(ids) < self.batch:
                return

    def owned_rows(self) -> None:
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
                gone = _rows(s.execute(delete(model).where(column == self.uid)))
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
                k for k in (_drop_export(self.svc, s, j) for j in jobs if j.state == "done") if k
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


def erase_user(svc: Services, job: Job, progress: Progress) -> dict[str, int]:
    """Erase `job.params.user_id` (see the module docstring); idempotent, so a re-run after a
    crash finishes the work. Returns counts of what changed."""
    return _Erasure(svc, job, progress).run()


def finish_erase(session: Session, job: Job, counts: Mapping[str, int]) -> None:
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
