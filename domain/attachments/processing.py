"""The media stage: turn an accepted upload (the sealed spool) into its stored variants, then
move the attachment processing → ready | rejected, once, announced to the uploader.

Images are decoded, bounded (pixel cap), oriented, stripped of every piece of metadata and
re-encoded, with thumbnails (storage/imaging.py); other files are re-sealed as they are. Each
variant is sealed under the conversation's data key and written atomically, so a re-run
(redelivery, the outbox sweeper) finds what already exists and makes only what is missing.
The spool goes once every variant exists, and the state moves by compare-and-set, with the
`attachment.ready` event in the same transaction: two runs announce once.

The plaintext exists only in this process's memory: the spool is read through a decrypting,
seekable reader, and outputs are sealed on their way to storage.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from core.crypto import MissingKeyError
from core.filecrypt import CorruptFile, SealedFile
from core.ids import utcnow
from core.services import Services
from domain import events, outbox
from domain.attachments.stored import (
    ORIGINAL,
    has_variant,
    open_upload,
    purge_files,
    storage_for,
    upload_key,
    variant_file,
    write_variant,
)
from models import Attachment
from storage import ObjectMissing, Storage
from storage.imaging import ImageRejected, sanitized_original, thumbnails, variants_for
from storage.sniff import ALLOWED, FileType

logger = logging.getLogger(__name__)

MEDIA_TASK = "tasks.media.process_attachment"
READY_EVENT = "attachment.ready"
_TYPES = {t.mime: t for t in ALLOWED}


class Unrecoverable(Exception):
    """The upload cannot become an attachment; `reason` is shown to the uploader."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def process(svc: Services, attachment_id: str) -> str:
    """Run the stage for one attachment; returns its state afterwards ("missing" if gone)."""
    extra = {"attachment_id": attachment_id}
    with svc.ReadSession() as s:
        att = s.get(Attachment, attachment_id)
    if att is None:
        logger.warning("media: attachment gone", extra=extra)
        return "missing"
    if att.state != "processing":  # done by an earlier run: only the outbox row may be left
        if att.state == "rejected":
            purge_files(svc, att)  # in case that run died between its commit and purge
        with svc.Session.begin() as s:
            mark_media_done(s, attachment_id)
        return att.state
    store = storage_for(svc)
    try:
        outcome = make_variants(svc, store, att)
    except (Unrecoverable, ImageRejected) as exc:
        return _reject(svc, att, exc.reason)
    except CorruptFile:  # a stored variant does not open: never serve it
        return _reject(svc, att, "a stored file failed its integrity check")
    store.delete(upload_key(att.id))  # every variant exists: the spool has served
    with svc.Session.begin() as s:
        changed = finish(s, att, state="ready", **outcome)
    logger.info(
        "media: ready" if changed else "media: already finished by another run",
        extra={**extra, "variants": sorted(outcome["variants"])},
    )
    return "ready"


def _reject(svc: Services, att: Attachment, reason: str) -> str:
    """A rejected upload leaves no bytes behind: the spool and any variant made so far.

    The state changes first: a run that lost a race with a successful one (and so found the
    spool gone) must not delete the files of a ready attachment."""
    with svc.Session.begin() as s:
        changed = finish(s, att, state="rejected", reason=reason)
    if not changed:
        logger.info("media: finished by another run", extra={"attachment_id": att.id})
        with svc.ReadSession() as s:
            return str(s.scalar(select(Attachment.state).where(Attachment.id == att.id)))
    purge_files(svc, att)
    logger.info("media: rejected", extra={"attachment_id": att.id, "reason": reason})
    return "rejected"


def make_variants(svc: Services, store: Storage, att: Attachment) -> dict[str, Any]:
    """Write the variants still missing; describe all of them (what `finish` records)."""
    ftype = _TYPES.get(att.content_type)
    if ftype is None:
        raise Unrecoverable("the file type is no longer allowed")
    try:
        dek = svc.keyring.data_key(att.key_id)
    except MissingKeyError as exc:
        raise Unrecoverable("the conversation's key is gone") from exc
    cap = svc.settings.max_image_pixels
    spool = None
    if not has_variant(store, att, ORIGINAL):
        spool = _spool(svc, att)
        if ftype.kind == "image":
            with spool.reader() as fp:
                original = sanitized_original(fp, ftype, cap)
            write_variant(store, att, dek, ORIGINAL, [original.data])
        else:
            write_variant(store, att, dek, ORIGINAL, _copy(spool))
    described = _describe(store, att, dek, ORIGINAL, ftype)
    variants = {ORIGINAL: described}
    if ftype.kind == "image":
        names = variants_for(described["width"], described["height"])
        missing = [n for n in names if not has_variant(store, att, n)]
        if missing:
            spool = spool or _spool(svc, att)
            with spool.reader() as fp:
                for rendition in thumbnails(fp, ftype, cap, missing):
                    write_variant(store, att, dek, rendition.variant, [rendition.data])
        for name in names:
            variants[name] = _describe(store, att, dek, name, None)
    return {
        "variants": variants,
        "size": described["size"],
        "width": described.get("width"),
        "height": described.get("height"),
    }


def _spool(svc: Services, att: Attachment) -> SealedFile:
    try:
        return open_upload(svc, att)
    except ObjectMissing as exc:
        raise Unrecoverable("the upload was lost before it could be processed") from exc
    except (CorruptFile, MissingKeyError, ValueError) as exc:
        raise Unrecoverable("the upload cannot be read back") from exc


def _copy(spool: SealedFile) -> Iterator[bytes]:
    try:
        yield from spool.iter_range()
    except CorruptFile as exc:
        raise Unrecoverable("the upload cannot be read back") from exc


def _describe(
    store: Storage, att: Attachment, dek: bytes, variant: str, ftype: FileType | None
) -> dict[str, Any]:
    """What a stored variant is (size, and for images type and dimensions from its header):
    read back rather than remembered, so a re-run that made nothing can still describe it."""
    from PIL import Image

    obj = variant_file(store, att, dek, variant)
    meta: dict[str, Any] = {"size": obj.size}
    if ftype is not None and ftype.kind != "image":
        meta["content_type"] = ftype.mime
        return meta
    with obj.reader() as fp, Image.open(fp) as im:
        meta.update(
            content_type=Image.MIME.get(im.format or "", "application/octet-stream"),
            width=im.width,
            height=im.height,
        )
    return meta


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
