"""Attachments: who may upload, see, attach and download them, and what each step changes.

An upload streams into storage sealed under a fresh per-upload key (the spool), because the
multipart body may name its conversation only after the file. The spool key is then sealed
under the conversation's data key in the attachment row. The media stage (tasks/media.py)
turns the spool into the stored variants, each sealed directly under the conversation's data
key with its own context (`att:<id>:<variant>`), and removes the spool. Downloads go through
signed, expiring URLs bound to one user, checked again against that user's rights.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import re
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from typing import Any, BinaryIO
from urllib.parse import quote

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from flask import current_app
from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session, object_session

from core import crypto
from core.filecrypt import SealedFile
from core.ids import utcnow
from core.services import Services
from domain import events, outbox
from domain.conversations import membership, readable, unexpired
from domain.errors import Conflict, DomainError, Forbidden, Invalid, NotFound
from domain.keys import conversation_key
from domain.pagination import decode_cursor, encode_cursor
from domain.principals import Principal
from models import Attachment, Conversation, Message, Participant
from storage import Storage, open_storage
from storage.imaging import SCALED, THUMB
from storage.sniff import Confirmed, FileType, Rejected, Sniffer, TooManyPixels, confirm

logger = logging.getLogger(__name__)

MEDIA_TASK = "tasks.media.process_attachment"
READY_EVENT = "attachment.ready"
ORIGINAL = "original"
VARIANTS = (ORIGINAL, THUMB, *SCALED)
FILENAME_MAX = 200
# Which attachment kinds each media message type may carry.
MESSAGE_KINDS = {
    "image": {"image"},
    "audio": {"audio"},
    "video": {"video"},
    "file": {"image", "file", "audio", "video"},
}
_URL_KEY_INFO = b"parley:download-url:v1"


class TooLarge(DomainError):
    status = 413
    title = "Content Too Large"


class UnsupportedType(DomainError):
    status = 415
    title = "Unsupported Media Type"


def storage_for(svc: Services) -> Storage:
    """This process's storage backend (built once per app, like the other services)."""
    store: Storage | None = current_app.extensions.get("parley_storage")
    if store is None:
        store = current_app.extensions["parley_storage"] = open_storage(svc.settings)
    return store


# --- where bytes live and what they are bound to --------------------------------------------


def upload_key(att_id: str) -> str:
    return f"uploads/{att_id}"


def object_key(conversation_id: str, att_id: str, variant: str) -> str:
    # grouped per conversation, so erasing a conversation is one prefix
    return f"attachments/{conversation_id}/{att_id}/{variant}"


def file_context(att_id: str, variant: str) -> str:
    return f"att:{att_id}:{variant}"


def _filename_aad(att_id: str) -> bytes:
    return f"attname:{att_id}".encode()


def _upload_key_aad(att_id: str) -> bytes:
    return f"attkey:{att_id}".encode()


def sealed(store: Storage, key: str, dek: bytes, context: str) -> SealedFile:
    """Random access to one stored object (ObjectMissing when it is not there)."""
    return SealedFile(dek, context, store.size(key), lambda a, b: store.open(key, a, b))


def open_upload(svc: Services, att: Attachment) -> SealedFile:
    if att.upload_key_ct is None:
        raise NotFound("the upload was already processed")
    spool_key = crypto.open_sealed(
        svc.keyring.data_key(att.key_id), att.upload_key_ct, _upload_key_aad(att.id)
    )
    return sealed(storage_for(svc), upload_key(att.id), spool_key, file_context(att.id, "upload"))


def open_variant(svc: Services, att: Attachment, variant: str) -> SealedFile:
    return sealed(
        storage_for(svc),
        object_key(att.conversation_id, att.id, variant),
        svc.keyring.data_key(att.key_id),
        file_context(att.id, variant),
    )


def purge_files(svc: Services, att: Attachment) -> None:
    """Delete every stored byte of an attachment (spool and variants); safe to repeat. For the
    media stage's rejections, and for retention and erasure."""
    store = storage_for(svc)
    store.delete(upload_key(att.id))
    for variant in VARIANTS:
        store.delete(object_key(att.conversation_id, att.id, variant))


def filename(svc: Services, att: Attachment) -> str:
    return svc.keyring.open_text(att.key_id, att.filename_ct, _filename_aad(att.id).decode())


# --- upload -----------------------------------------------------------------------------------

_UNSAFE = re.compile(r"[\x00-\x1f\x7f\u200b-\u200f\u202a-\u202e\u2066-\u2069/\\:*?\"<>|]+")


def sanitize_filename(raw: str | None, ftype: FileType) -> str:
    """A display name that cannot be a path, hide its extension (RTL override) or break a
    header: the last path part, control and bidi characters removed, at most FILENAME_MAX
    characters, with the extension of the type we detected (not the one claimed)."""
    name = unicodedata.normalize("NFC", raw or "")
    name = re.split(r"[/\\]", name)[-1]
    name = _UNSAFE.sub("_", name).strip(" ._")
    stem, dot, _ = name.rpartition(".")
    if not dot:
        stem = name
    stem = stem[: FILENAME_MAX - len(ftype.ext) - 1].rstrip(" ._") or "file"
    return f"{stem}.{ftype.ext}"


def uploadable(session: Session, who: Principal, cid: str) -> Conversation:
    """The conversation an upload is bound to: the caller must be able to post in it."""
    user = who.require_user()
    conv = session.get(Conversation, cid)
    part = membership(session, cid, user) if conv is not None else None
    if conv is None or part is None:
        raise NotFound(f"conversation {cid} does not exist or you are not a participant")
    if part.role == "observer":
        raise Forbidden("observers cannot upload to this conversation")
    if conv.status != "active":
        raise Conflict(f"the conversation is {conv.status}; reopen it to upload")
    return conv


class Intake:
    """The checks an upload goes through while it streams in, and once it is complete.

    Raises TooLarge (413) as soon as the file passes its limit (images have a lower one than
    other files, known once the first bytes are sniffed) and UnsupportedType (415) as soon as
    the bytes show a type off the allow-list. Keeps no file bytes beyond the sniffed head.
    """

    def __init__(self, svc: Services) -> None:
        self.settings = svc.settings
        self.size = 0
        self._sniffer = Sniffer()
        self._limit = max(self.settings.max_file_bytes, self.settings.max_image_bytes)

    def feed(self, piece: bytes) -> None:
        self.size += len(piece)
        try:
            ftype = self._sniffer.feed(piece)
        except Rejected as exc:
            raise UnsupportedType(exc.reason, {"file": [exc.reason]}) from exc
        if ftype is not None:
            self._limit = (
                self.settings.max_image_bytes
                if ftype.kind == "image"
                else self.settings.max_file_bytes
            )
        if self.size > self._limit:
            what = "an image" if ftype is not None and ftype.kind == "image" else "a file"
            raise TooLarge(
                f"{what} may be at most {self._limit} bytes",
                {"file": [f"larger than {self._limit} bytes"]},
            )

    def finish(self, open_spool: Callable[[], BinaryIO]) -> Confirmed:
        """Final checks on the complete upload, reading the sealed spool where needed."""
        try:
            ftype = self._sniffer.finish()
        except Rejected as exc:
            status = Invalid if exc.reason == "the file is empty" else UnsupportedType
            raise status(exc.reason, {"file": [exc.reason]}) from exc
        try:
            with open_spool() as fp:
                found = confirm(ftype, fp)
        except TooManyPixels as exc:
            raise Invalid(exc.reason, {"file": [exc.reason]}) from exc
        except Rejected as exc:
            raise UnsupportedType(exc.reason, {"file": [exc.reason]}) from exc
        cap = self.settings.max_image_pixels
        if found.width is not None and found.height is not None:
            pixels = found.width * found.height
            if pixels > cap:
                reason = f"the image has {pixels} pixels; the limit is {cap}"
                raise Invalid(reason, {"file": [reason]})
        return found


def new_upload_key() -> bytes:
    return crypto.new_data_key()


def create(
    svc: Services,
    session: Session,
    who: Principal,
    conv: Conversation,
    att_id: str,
    *,
    found: Confirmed,
    size: int,
    filename: str,
    spool_key: bytes,
) -> Attachment:
    """Record the accepted upload and queue the media stage, in the caller's transaction."""
    dk = conversation_key(svc, session, conv)
    dek = svc.keyring.data_key(dk)
    att = Attachment(
        id=att_id,
        conversation_id=conv.id,
        uploader_id=who.require_user(),
        state="processing",
        kind=found.type.kind,
        content_type=found.type.mime,
        key_id=dk,
        filename_ct=crypto.seal(dek, filename.encode(), _filename_aad(att_id)),
        upload_key_ct=crypto.seal(dek, spool_key, _upload_key_aad(att_id)),
        size=size,
        width=found.width,
        height=found.height,
        variants={},
    )
    session.add(att)
    outbox.add(session, MEDIA_TASK, [att_id], ref_id=att_id)
    session.flush()
    logger.info(
        "attachment accepted",
        extra={"attachment_id": att_id, "conversation_id": conv.id, "kind": att.kind},
    )
    return att


# --- the media stage's outcome ----------------------------------------------------------------


def finish(
    session: Session,
    att: Attachment,
    *,
    state: str,
    variants: dict[str, Any] | None = None,
    size: int | None = None,
    width: int | None = None,
    height: int | None = None,
    reason: str | None = None,
) -> bool:
    """processing → ready | rejected, once (compare-and-set), announced to the uploader.

    Returns False when another run got there first (then nothing changes)."""
    values: dict[str, Any] = {
        "state": state,
        "upload_key_ct": None,
        "processed_at": utcnow(),
        "reason": reason[:300] if reason else None,
    }
    if state == "ready":
        values.update(variants=variants or {}, size=size, width=width, height=height)
    done = session.execute(
        update(Attachment)
        .where(Attachment.id == att.id, Attachment.state == "processing")
        .values(**values)
    )
    outbox.mark_done(session, [att.id], MEDIA_TASK)
    if not getattr(done, "rowcount", 0):
        return False
    data: dict[str, Any] = {
        "attachment_id": att.id,
        "conversation_id": att.conversation_id,
        "state": state,
    }
    if reason:
        data["reason"] = reason[:300]
    events.emit(session, READY_EVENT, data, [att.uploader_id])
    return True


def mark_media_done(session: Session, att_id: str) -> None:
    outbox.mark_done(session, [att_id], MEDIA_TASK)


# --- reading ----------------------------------------------------------------------------------


def visible(session: Session, user_id: str | None, att_id: str) -> tuple[Attachment, Participant]:
    """The attachment if `user_id` may see it: a current participant who uploaded it, or who
    can see the undeleted message carrying it. Anything else is 404, existence included."""
    from domain.messages import can_see

    missing = NotFound(f"attachment {att_id} does not exist or you cannot see it")
    att = session.get(Attachment, att_id)
    if att is None or user_id is None:
        raise missing
    part = membership(session, att.conversation_id, user_id)
    if part is None:
        raise missing
    if att.uploader_id == user_id:
        return att, part
    msg = session.get(Message, att.message_id) if att.message_id else None
    if msg is None or msg.deleted_at is not None:
        raise missing
    if not can_see(msg, Principal(user_id=user_id), part):
        raise missing
    return att, part


def _iso(value: Any) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value is not None else None


def view(
    svc: Services, att: Attachment, *, urls_for: str | None = None, now: int | None = None
) -> dict[str, Any]:
    """The public shape; with `urls_for`, fresh signed download URLs for that user."""
    out: dict[str, Any] = {
        "id": att.id,
        "conversation_id": att.conversation_id,
        "message_id": att.message_id,
        "state": att.state,
        "kind": att.kind,
        "content_type": att.content_type,
        "filename": filename(svc, att),
        "size": att.size,
        "width": att.width,
        "height": att.height,
        "variants": {name: dict(meta) for name, meta in sorted((att.variants or {}).items())},
        "created_at": _iso(att.created_at),
    }
    if att.state == "rejected":
        out["reason"] = att.reason
    if urls_for is not None and att.state == "ready":
        now = int(utcnow().timestamp()) if now is None else now
        expires = now + svc.settings.download_ttl_s
        for name, meta in out["variants"].items():
            meta["url"] = download_url(svc, att.id, name, urls_for, expires)
        out["urls_expire_at"] = expires
    return out


_CACHE = "parley_attachments"  # session.info: message id → its attachments, loaded or known


def for_message(svc: Services, msg: Message) -> list[dict[str, Any]]:
    """Attachments of a message, as embedded in it (no URLs: the message shape is the same
    for every viewer; URLs come from GET /v1/attachments/{id}).

    Loads attachments for every message of the same session in one query, so rendering a
    page of messages costs one query, not one per message."""
    session = object_session(msg)
    if session is None:
        with svc.ReadSession() as s:
            rows = s.scalars(
                select(Attachment).where(Attachment.message_id == msg.id).order_by(Attachment.id)
            ).all()
            return [_embedded(svc, a) for a in rows]
    cache: dict[str, list[Attachment]] = session.info.setdefault(_CACHE, {})
    if msg.id not in cache:
        ids = {
            obj.id
            for obj in list(session.identity_map.values())
            if isinstance(obj, Message) and obj.id not in cache
        } | {msg.id}
        found: dict[str, list[Attachment]] = {i: [] for i in ids}
        for att in session.scalars(
            select(Attachment).where(Attachment.message_id.in_(ids)).order_by(Attachment.id)
        ):
            found[att.message_id or ""].append(att)
        cache.update(found)
    return [_embedded(svc, a) for a in cache[msg.id]]


def _embedded(svc: Services, att: Attachment) -> dict[str, Any]:
    out = view(svc, att)
    del out["conversation_id"], out["message_id"]
    return out


def list_page(
    session: Session, who: Principal, cid: str, *, kind: str | None, cursor: str | None, limit: int
) -> tuple[list[tuple[Attachment, int]], str | None]:
    """A conversation's shared media, newest message first: ready attachments of undeleted
    messages the caller can see. Participants only."""
    user = who.require_user()
    _, part = readable(session, who, cid)
    if part is None:
        raise NotFound(f"conversation {cid} does not exist or you are not a participant")
    stmt = (
        select(Attachment, Message.seq)
        .join(Message, Message.id == Attachment.message_id)
        .where(
            Attachment.conversation_id == cid,
            Attachment.state == "ready",
            Message.deleted_at.is_(None),
            unexpired(),
        )
    )
    if part.role != "moderator":
        stmt = stmt.where(or_(Message.state == "delivered", Message.sender_id == user))
    if kind:
        stmt = stmt.where(Attachment.kind == kind)
    if cursor:
        seq, last_id = decode_cursor(cursor, ("s", "id"))
        if not isinstance(seq, int) or isinstance(seq, bool) or not isinstance(last_id, str):
            raise Invalid(
                "the cursor is not valid; start again without it", {"cursor": ["invalid"]}
            )
        stmt = stmt.where(or_(Message.seq < seq, and_(Message.seq == seq, Attachment.id < last_id)))
    rows = [
        (a, s)
        for a, s in session.execute(
            stmt.order_by(Message.seq.desc(), Attachment.id.desc()).limit(limit + 1)
        )
    ]
    next_cursor = None
    if len(rows) > limit:
        rows = rows[:limit]
        next_cursor = encode_cursor({"s": rows[-1][1], "id": rows[-1][0].id})
    return rows, next_cursor


# --- attaching to a message -------------------------------------------------------------------


def check_attachable(
    svc: Services, session: Session, who: Principal, cid: str, mtype: str, ids: Sequence[str]
) -> list[Attachment]:
    """The attachments a new message may carry: the sender's own, ready, unused, of this
    conversation, of a kind the message type takes. Locked on PostgreSQL until commit."""
    if not ids:
        return []
    if len(set(ids)) != len(ids):
        raise Invalid("an attachment is listed twice", {"attachments": ["duplicate ids"]})
    stmt = select(Attachment).where(Attachment.id.in_(list(ids)))
    if svc.dialect != "sqlite":  # SQLite's BEGIN IMMEDIATE already serializes writers
        stmt = stmt.with_for_update()
    rows = {a.id: a for a in session.scalars(stmt)}
    kinds = MESSAGE_KINDS[mtype]
    out = []
    for att_id in ids:
        att = rows.get(att_id)
        if att is None or att.conversation_id != cid:
            raise Invalid(
                f"attachment {att_id} is not an upload to this conversation",
                {"attachments": [f"unknown attachment {att_id}"]},
            )
        if att.uploader_id != who.user_id:
            raise Forbidden(f"only the uploader may attach {att_id}")
        if att.state == "processing":
            raise Conflict(
                f"attachment {att_id} is still being processed; wait for attachment.ready",
                {"attachments": [f"{att_id} is processing"]},
            )
        if att.state == "rejected":
            raise Invalid(
                f"attachment {att_id} was rejected: {att.reason}",
                {"attachments": [f"{att_id} was rejected"]},
            )
        if att.message_id is not None:
            raise Conflict(
                f"attachment {att_id} is already part of a message",
                {"attachments": [f"{att_id} is already used"]},
            )
        if att.kind not in kinds:
            raise Invalid(
                f"a {mtype} message cannot carry a {att.kind} attachment ({att.content_type})",
                {"attachments": [f"{att_id} is {att.kind}, not {' or '.join(sorted(kinds))}"]},
            )
        out.append(att)
    return out


def attach_to_message(session: Session, rows: Iterable[Attachment], message_id: str) -> None:
    """Give the attachments to the message, each once (compare-and-set on message_id).
    Rendering the new message in the same session then needs no query for them."""
    rows = sorted(rows, key=lambda a: a.id)
    ids = [a.id for a in rows]
    cache: dict[str, list[Attachment]] = session.info.setdefault(_CACHE, {})
    if not ids:
        cache[message_id] = []
        return
    done = session.execute(
        update(Attachment)
        .where(
            Attachment.id.in_(ids),
            Attachment.message_id.is_(None),
            Attachment.state == "ready",
        )
        .values(message_id=message_id)
        .execution_options(synchronize_session="fetch")
    )
    if getattr(done, "rowcount", 0) != len(ids):
        raise Conflict(
            "an attachment was used by another message at the same time",
            {"attachments": ["already used"]},
        )
    cache[message_id] = rows


# --- signed download URLs ---------------------------------------------------------------------


def _url_keys(svc: Services) -> list[bytes]:
    """HMAC keys derived from each master key (never the JWT secret, never a master key as
    is); the newest signs, all verify, so a master-key rotation breaks no live URL."""
    cache: dict[str, bytes] = current_app.extensions.setdefault("parley_url_keys", {})
    keys = []
    for kid, material in svc.keyring.master.keys:
        key = cache.get(kid)
        if key is None:
            hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_URL_KEY_INFO)
            key = cache[kid] = hkdf.derive(material)
        keys.append(key)
    return keys


def _mac(key: bytes, att_id: str, variant: str, expires: int, user_id: str) -> str:
    message = json.dumps([att_id, variant, expires, user_id], separators=(",", ":")).encode()
    digest = hmac.new(key, message, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def download_url(svc: Services, att_id: str, variant: str, user_id: str, expires: int) -> str:
    sig = _mac(_url_keys(svc)[0], att_id, variant, expires, user_id)
    return (
        f"/v1/attachments/{att_id}/content/{variant}"
        f"?u={quote(user_id, safe='')}&exp={expires}&sig={sig}"
    )


def check_signature(
    svc: Services, att_id: str, variant: str, user_id: str, expires: int, sig: str
) -> None:
    """403 unless the signature is ours for exactly these values and has not expired."""
    if not any(
        # bytes: compare_digest refuses non-ASCII str, and `sig` is whatever the client sent
        hmac.compare_digest(_mac(k, att_id, variant, expires, user_id).encode(), sig.encode())
        for k in _url_keys(svc)
    ):
        raise Forbidden("the download link is not valid; ask for a new one")
    if expires < utcnow().timestamp():
        raise Forbidden("the download link has expired; ask for a new one")
